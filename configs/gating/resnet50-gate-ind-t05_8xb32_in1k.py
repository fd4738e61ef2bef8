# GatedResNet-50, data-independent gates (pruning), target rate t = 0.5 (Herrmann et al.,
# Fig. 4b "Ours ind t = .5"): the dependent config's recipe (see
# resnet50-gate-dep-t05_8xb32_in1k.py) with learnable per-gate logits instead of gate networks.
# Departure: the paper trains its data-independent networks 30 epochs more (130); pass
# --cfg-options train_cfg.max_epochs=130 to follow it. tools/export_pruned.py turns the trained
# model into a physically smaller network.
_base_ = './resnet50-gate-dep-t05_8xb32_in1k.py'

model = dict(backbone=dict(gate_type='independent'))
