# ImageNet pre-training of the Cityscapes FCN-R86-MoD backbone (CNN-MoD paper, Table 3), see
# resnetv1c50-mod_8xb32_in1k.py.
_base_ = './resnetv1c50-mod_8xb32_in1k.py'

model = dict(backbone=dict(depth=86))
