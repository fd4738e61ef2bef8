# Table 1 (CIFAR-10) baseline of dynamic channel execution (Spasov & Lio): DenseNet-121 on CIFAR-10
# with the recipe of Sec. 3.3, 6,964,106 parameters (the paper: 6.96 M), 0.585e8 MACs at 32x32
# (0.59e8).
_base_ = [
    './_base_/models/densenet121.py', './_base_/datasets/cifar10.py',
    './_base_/schedules/sgd_160e.py', './_base_/default_runtime.py'
]
