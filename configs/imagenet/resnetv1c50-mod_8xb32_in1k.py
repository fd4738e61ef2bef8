# ImageNet pre-training of the Cityscapes backbones (CNN-MoD paper, Table 3) -- not a row of
# Table 1. mmseg's FCN uses ResNetV1c (deep 3x3 stem) pre-trained on ImageNet
# (open-mmlab://resnet50_v1c); its MoD counterpart needs ImageNet weights of the same
# architecture, which a ResNetMoD (7x7 stem) checkpoint is not. Same recipe as
# mmpretrain's resnetv1c50_8xb32_in1k.py (= the ResNet-50 recipe with the V1c stem).
_base_ = 'mmpretrain::resnet/resnetv1c50_8xb32_in1k.py'

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

# The base's backbone is dict(type='ResNetV1c', depth=50, num_stages=4, out_indices=(3, ),
# style='pytorch'): all ResNetV1cMoD arguments, so swapping the type is enough.
model = dict(backbone=dict(type='ResNetV1cMoD', depth=50))
