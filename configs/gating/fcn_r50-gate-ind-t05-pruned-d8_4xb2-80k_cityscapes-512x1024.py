# FCN with the pruned ResNet-50 exported from the ImageNet data-independent gated model
# (configs/gating/resnet50-gate-ind-t05-pruned_8xb32_in1k.py says how to export it): the FCN-R50
# baseline's recipe (configs/cityscapes/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py, mmseg's) with
# the backbone swapped. Not an experiment of the paper (ImageNet / CIFAR only).
# Departure from the baseline: the stem is ResNet-50's single 7x7 conv, not V1c's deep stem,
# because the ImageNet gated model the channels and weights come from has that stem (export a
# GatedResNetV1c model to get a PrunedResNetV1c). Dilations, strides, contract_dilation, SyncBN
# are the base's. Another export: --cfg-options model.backbone.channel_cfg=... and
# model.backbone.init_cfg.checkpoint=...
_base_ = '../cityscapes/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py'

export_dir = 'work_dirs/resnet50-gate-ind-t05_8xb32_in1k/pruned/'
model = dict(
    pretrained=None,  # the base's open-mmlab://resnet50_v1c would overwrite init_cfg
    backbone=dict(
        type='PrunedResNet',
        channel_cfg=export_dir + 'resnet50-gate-ind-t05_8xb32_in1k_channels.json',
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint=export_dir + 'resnet50-gate-ind-t05_8xb32_in1k_pruned.pth')))
