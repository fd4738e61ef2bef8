# Table 1 (SVHN) baseline of dynamic channel execution (Spasov & Lio): VGG-19 on SVHN with the
# recipe of Sec. 3.3, 20,035,018 parameters (the paper: 20.035 M).
_base_ = [
    './_base_/models/vgg19bn.py', './_base_/datasets/svhn.py',
    './_base_/schedules/sgd_20e.py', './_base_/default_runtime.py'
]
