# ResNet-101 + PiX on ImageNet (Pick-or-Mix paper, Table 1 E1): the ResNet-101 baseline recipe of
# configs/imagenet/ with the backbone swapped (see resnet50-pix_8xb32_in1k.py).
_base_ = '../imagenet/resnet101_8xb32_in1k.py'

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

model = dict(backbone=dict(type='ResNetPiX', depth=101))
