# ResNet-152 + PiX on ImageNet (Pick-or-Mix paper, Table 1 E2): the same recipe at depth 152
# (configs/imagenet/ has no plain ResNet-152 config; its ResNet152-MoD row uses this recipe too).
_base_ = './resnet50-pix_8xb32_in1k.py'

model = dict(backbone=dict(depth=152))
