# MobileNetV2 baseline (CNN-MoD paper, Table 2): mmpretrain's MobileNetV2 recipe unchanged
# (batch 256, SGD lr 0.045, momentum 0.9, wd 4e-5, lr x0.98 every epoch, 300 epochs).
_base_ = 'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py'

# Not needed by the standard MobileNetV2; kept so every config in configs/ loads the same way.
custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
