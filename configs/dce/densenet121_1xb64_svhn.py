# Table 1 (SVHN) baseline of dynamic channel execution (Spasov & Lio): DenseNet-121 on SVHN with the
# recipe of Sec. 3.3, 6,964,106 parameters (the paper: 6.96 M).
_base_ = [
    './_base_/models/densenet121.py', './_base_/datasets/svhn.py',
    './_base_/schedules/sgd_20e.py', './_base_/default_runtime.py'
]
