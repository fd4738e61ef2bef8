# Table 1 (CIFAR-10) baseline of dynamic channel execution (Spasov & Lio): ResNet-50 on CIFAR-10
# with the recipe of Sec. 3.3, 23,528,522 parameters (the paper: 23.52 M).
_base_ = [
    './_base_/models/resnet50.py', './_base_/datasets/cifar10.py',
    './_base_/schedules/sgd_160e.py', './_base_/default_runtime.py'
]
