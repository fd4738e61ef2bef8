# FCN-R50 baseline (CNN-MoD paper, Table 3): mmseg's recipe unchanged -- every setting the paper
# lists is the base's: 512x1024 crops, 4 GPUs x 2 = batch 8, 80k iterations, SGD lr 0.01,
# momentum 0.9, wd 5e-4, poly lr (power 0.9, min 1e-4), auxiliary FCN head on stage 3 with loss
# weight 0.4, dropout 0.1, validation and checkpoint every 8k iterations, SyncBN, backbone from
# ImageNet-pretrained ResNetV1c-50 (open-mmlab://resnet50_v1c, downloaded by mmengine).
_base_ = 'mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py'

# Not needed by the standard ResNetV1c; kept so every config in configs/ loads the same way.
custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
