# Table 1 (SVHN) baseline of dynamic channel execution (Spasov & Lio): ResNet-50 on SVHN with the
# recipe of Sec. 3.3, 23,528,522 parameters (the paper: 23.52 M).
_base_ = [
    './_base_/models/resnet50.py', './_base_/datasets/svhn.py',
    './_base_/schedules/sgd_20e.py', './_base_/default_runtime.py'
]
