# GatedMobileNetV2 at 224x224, data-dependent gates, t = 0.5 (Herrmann et al., Fig. 4d "Ours dep
# t = .5"): gates on the input, expansion and output of every inverted residual with the paper's
# per-stage granularity table, and the FLOPs-weighted activation loss (Sec. 3.5), since
# MobileNetV2's gates control very different numbers of FLOPs.
# Recipe (paper Sec. 4.1): SGD batch 256 (8 x 32), momentum 0.9, wd 1e-4 (gate parameters
# 1e-4 * 20 / |G|), lr 0.5 decayed x0.99 per epoch "until convergence, approximately 700
# epochs" (the paper found x0.98 for 350 epochs as good: set param_scheduler.gamma=0.98 and
# train_cfg.max_epochs=350). Trained from scratch; data pipeline: mmpretrain's MobileNetV2 one.
_base_ = '../imagenet/mobilenet-v2_8xb32_in1k.py'

model = dict(
    backbone=dict(
        type='GatedMobileNetV2',  # the base's widen_factor=1.0 stays
        gate_type='dependent',
        granularity='low',
        gate_loss=dict(type='FLOPsActivationLoss', target=0.5),
        gate_mode='threshold',
        gate_tau=0.5))

optim_wrapper = dict(
    constructor='GateOptimWrapperConstructor',
    optimizer=dict(type='SGD', lr=0.5, momentum=0.9, weight_decay=1e-4, nesterov=False),
    paramwise_cfg=dict(gate_decay_scale=20))
param_scheduler = dict(type='StepLR', by_epoch=True, step_size=1, gamma=0.99)
train_cfg = dict(by_epoch=True, max_epochs=700, val_interval=1)
custom_hooks = [dict(type='GateStatsHook')]
