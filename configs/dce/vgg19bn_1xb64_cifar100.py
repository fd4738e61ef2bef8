# Table 1 (CIFAR-100) baseline of dynamic channel execution (Spasov & Lio): VGG-19 on CIFAR-100 with
# the recipe of Sec. 3.3, 20,081,188 parameters (the paper: 20.08 M), 3.99e8 MACs at 32x32 (the
# paper: 4e8 FLOPs).
_base_ = [
    './_base_/models/vgg19bn.py', './_base_/datasets/cifar100.py',
    './_base_/schedules/sgd_160e.py', './_base_/default_runtime.py'
]
model = dict(head=dict(num_classes=100))
