# FCN with a gated ResNetV1c-50 backbone (data-dependent gates, t = 0.5) on Cityscapes: the
# FCN-R50 baseline's recipe (configs/cityscapes/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py,
# mmseg's unchanged: 512x1024 crops, batch 8, 80k iterations, SGD lr 0.01 wd 5e-4, poly) with
# the backbone swapped. Not an experiment of the paper (ImageNet / CIFAR only): the ImageNet
# practice is carried over -- fine-tune from the standard pretrained network (the base's
# model.pretrained, open-mmlab://resnet50_v1c, which mmseg hands to the backbone; its weights
# load into the gated blocks, the gates start ~98% on), gate weight decay wd * 20 / |G|.
# The gate loss reaches the backbone through stage 4, which feeds the FCN head.
_base_ = '../cityscapes/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py'

model = dict(
    backbone=dict(
        type='GatedResNetV1c',  # the base's keys (dilations, strides, contract_dilation,
        gate_type='dependent',  # norm_cfg, norm_eval, ...) are GatedResNetV1c arguments too
        granularity='low',
        gate_loss=dict(type='BatchActivationLoss', target=0.5),
        gate_mode='threshold',
        gate_tau=0.5))

optim_wrapper = dict(
    constructor='GateOptimWrapperConstructor', paramwise_cfg=dict(gate_decay_scale=20))
custom_hooks = [dict(type='GateStatsHook')]
