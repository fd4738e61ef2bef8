# Table 1 (CIFAR-10) baseline of dynamic channel execution (Spasov & Lio): VGG-19 on CIFAR-10 with
# the recipe of Sec. 3.3, 20,035,018 parameters (the paper: 20.035 M); its convs take 3.98e8
# multiply-adds at 32x32, the paper's "FLOPs" (398,743,040 MACs with BN, pooling and FC).
_base_ = [
    './_base_/models/vgg19bn.py', './_base_/datasets/cifar10.py',
    './_base_/schedules/sgd_160e.py', './_base_/default_runtime.py'
]
