# Ensemble inference of the GatedResNet-50 dep t = 0.5 model (Herrmann et al., Sec. 3.4 and
# Fig. 11 "ensemble of 5 different stochastic runs"): 5 passes with *stochastic* gates over the
# same image, their class scores averaged by mmpretrain's test-time-augmentation wrapper.
# Train with resnet50-gate-dep-t05_8xb32_in1k.py; test the checkpoint with this config:
#   python tools/test.py configs/gating/resnet50-gate-dep-t05-ens5_8xb32_in1k.py CKPT --tta
# (mmpretrain's --tta: model <- dict(tta_model, module=model), test pipeline <- tta_pipeline).
# GateStatsHook's gate/* metrics are per pass; the ensemble costs 5 passes per image.
_base_ = './resnet50-gate-dep-t05_8xb32_in1k.py'

num_passes = 5
model = dict(backbone=dict(gate_mode='stochastic', init_cfg=None))  # weights: the checkpoint
tta_model = dict(type='AverageClsScoreTTA')
# TestTimeAug runs the model once per branch: 5 identical branches, differing only in the gates.
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug',
         transforms=[[dict(type='ResizeEdge', scale=256, edge='short')] * num_passes,
                     [dict(type='CenterCrop', crop_size=224)],
                     [dict(type='PackInputs')]]),
]
