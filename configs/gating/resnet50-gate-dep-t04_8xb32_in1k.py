# GatedResNet-50, data-dependent gates, target rate t = 0.4 (Herrmann et al., Fig. 4a); the
# t = 0.5 config's recipe otherwise.
_base_ = './resnet50-gate-dep-t05_8xb32_in1k.py'

model = dict(backbone=dict(gate_loss=dict(target=0.4)))
