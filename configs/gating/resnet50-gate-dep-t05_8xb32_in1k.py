# GatedResNet-50, data-dependent gates, target rate t = 0.5 (Herrmann et al., Fig. 4a "Ours dep
# t = .5"): mmpretrain's ResNet-50 recipe (configs/imagenet/resnet50_8xb32_in1k.py: 8 GPUs x 32
# = batch 256, SGD lr 0.1, momentum 0.9, wd 1e-4, lr x0.1 every 30 epochs, 100 epochs) -- the
# paper's Sec. 4.1 schedule -- fine-tuned from the ImageNet ResNet-50 as the paper does.
# Gate parameters get weight decay 1e-4 * 20 / |G| (paper; the authors' code: 40, set
# paramwise_cfg.gate_decay_scale=40). Evaluation thresholds the gates at 0.5 (paper's default);
# run tools/recalibrate_bn.py on the final checkpoint first (paper Sec. 4.1).
# Departure: the paper's "fast_mode" bilinear resizing is not reproduced (mmpretrain's pipeline).
_base_ = '../imagenet/resnet50_8xb32_in1k.py'

resnet50_checkpoint = ('https://download.openmmlab.com/mmclassification/v0/resnet/'
                       'resnet50_8xb32_in1k_20210831-ea4938fc.pth')
model = dict(
    backbone=dict(
        type='GatedResNet',  # the base's ResNet keys (num_stages, out_indices, style) stay
        depth=50,
        gate_type='dependent',
        granularity='low',  # 16/32/64/128 filters per gate per stage, half on contractions
        gate_loss=dict(type='BatchActivationLoss', target=0.5),
        gate_mode='threshold',
        gate_tau=0.5,
        # the standard ResNet-50's weights load into the gated blocks; the gates start ~98% on
        init_cfg=dict(type='Pretrained', checkpoint=resnet50_checkpoint, prefix='backbone.')))

optim_wrapper = dict(
    constructor='GateOptimWrapperConstructor', paramwise_cfg=dict(gate_decay_scale=20))
# gate_rate / gate_flops_ratio / gate_loss in the training log; gate/* in the val/test metrics
custom_hooks = [dict(type='GateStatsHook')]
