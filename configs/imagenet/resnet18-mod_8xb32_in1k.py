# ResNet18-MoD on ImageNet (CNN-MoD paper, Table 1): the ResNet50-MoD recipe at depth 18.
# Depths 18-42 use BasicBlock (expansion 1), so the last stage gives 512 channels, not 2048.
_base_ = './resnet50-mod_8xb32_in1k.py'

model = dict(backbone=dict(depth=18), head=dict(in_channels=512))
