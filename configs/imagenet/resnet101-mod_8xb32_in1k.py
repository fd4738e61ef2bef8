# ResNet101-MoD on ImageNet (CNN-MoD paper, Table 1): the ResNet50-MoD recipe at depth 101
# (Bottleneck blocks, stages of appendix Table 5, see ResNetMoD.arch_settings).
_base_ = './resnet50-mod_8xb32_in1k.py'

model = dict(backbone=dict(depth=101))
