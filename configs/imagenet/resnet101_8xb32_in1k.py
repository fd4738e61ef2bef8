# ResNet-101 baseline (CNN-MoD paper, Table 1 / Fig. 3): mmpretrain's recipe unchanged.
_base_ = 'mmpretrain::resnet/resnet101_8xb32_in1k.py'

# Not needed by the standard ResNet; kept so every config in configs/ loads the same way.
custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
