# Table 1 (CIFAR-100) baseline of dynamic channel execution (Spasov & Lio): DenseNet-121 on
# CIFAR-100 with the recipe of Sec. 3.3, 7,056,356 parameters (the paper: 7.05 M), 0.586e8 MACs
# (0.6e8).
_base_ = [
    './_base_/models/densenet121.py', './_base_/datasets/cifar100.py',
    './_base_/schedules/sgd_160e.py', './_base_/default_runtime.py'
]
model = dict(head=dict(num_classes=100))
