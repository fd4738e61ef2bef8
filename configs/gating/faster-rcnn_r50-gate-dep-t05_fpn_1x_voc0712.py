# Faster R-CNN with a gated ResNet-50-FPN backbone (data-dependent gates, t = 0.5) on VOC07+12:
# the baseline's recipe (configs/voc/faster-rcnn_r50_fpn_1x_voc0712.py, mmdet's unchanged) with
# the backbone swapped. Not an experiment of the paper (ImageNet / CIFAR only): the ImageNet
# practice is carried over -- fine-tune from the standard pretrained ResNet-50 (the base's
# init_cfg, torchvision://resnet50; its weights load into the gated blocks, the gates start ~98%
# on), gate weight decay wd * 20 / |G|. As in the base, stage 1 (with its gates) is frozen and
# BN statistics are frozen (norm_eval, batch 2 per GPU), gate networks' BN included.
_base_ = '../voc/faster-rcnn_r50_fpn_1x_voc0712.py'

model = dict(
    backbone=dict(
        type='GatedResNet',  # the base's mmdet ResNet keys are GatedResNet arguments too
        gate_type='dependent',
        granularity='low',
        gate_loss=dict(type='BatchActivationLoss', target=0.5),
        gate_mode='threshold',
        gate_tau=0.5))

optim_wrapper = dict(
    constructor='GateOptimWrapperConstructor', paramwise_cfg=dict(gate_decay_scale=20))
custom_hooks = [dict(type='GateStatsHook')]
