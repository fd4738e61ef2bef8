# Faster R-CNN R50-FPN with the pruned ResNet-50 exported from the ImageNet data-independent
# gated model (configs/gating/resnet50-gate-ind-t05-pruned_8xb32_in1k.py says how to export it):
# the baseline's recipe (configs/voc/faster-rcnn_r50_fpn_1x_voc0712.py, mmdet's unchanged:
# frozen stage 1, norm_eval) with the backbone swapped; the residual stream keeps ResNet-50's
# widths, so the FPN is unchanged. Not an experiment of the paper (ImageNet / CIFAR only).
# Another export: --cfg-options model.backbone.channel_cfg=... and
# model.backbone.init_cfg.checkpoint=...
_base_ = '../voc/faster-rcnn_r50_fpn_1x_voc0712.py'

export_dir = 'work_dirs/resnet50-gate-ind-t05_8xb32_in1k/pruned/'
model = dict(
    backbone=dict(
        type='PrunedResNet',
        channel_cfg=export_dir + 'resnet50-gate-ind-t05_8xb32_in1k_channels.json',
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint=export_dir + 'resnet50-gate-ind-t05_8xb32_in1k_pruned.pth')))
