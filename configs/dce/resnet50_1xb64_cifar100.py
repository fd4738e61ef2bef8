# Table 1 (CIFAR-100) baseline of dynamic channel execution (Spasov & Lio): ResNet-50 on CIFAR-100
# with the recipe of Sec. 3.3, 23,712,932 parameters (the paper: 23.7 M).
_base_ = [
    './_base_/models/resnet50.py', './_base_/datasets/cifar100.py',
    './_base_/schedules/sgd_160e.py', './_base_/default_runtime.py'
]
model = dict(head=dict(num_classes=100))
