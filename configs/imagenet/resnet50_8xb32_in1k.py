# ResNet-50 baseline (CNN-MoD paper, Table 1): mmpretrain's recipe unchanged (batch 256, SGD
# lr 0.1, momentum 0.9, wd 1e-4, lr x0.1 every 30 epochs, 100 epochs).
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'

# Not needed by the standard ResNet; kept so every config in configs/ loads the same way.
custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
