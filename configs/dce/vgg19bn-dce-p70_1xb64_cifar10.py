# Table 1 (CIFAR-10), VGG-19 with 70% of the channels active (the paper's best CIFAR-10 VGG
# row); as vgg19bn-dce-p40_1xb64_cifar10.py otherwise.
_base_ = './vgg19bn-dce-p40_1xb64_cifar10.py'
model = dict(backbone=dict(ratio=0.7))
