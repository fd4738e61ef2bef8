# Table 1 (CIFAR-100), VGG-19 with 90% of the channels active (the paper's best CIFAR-100 VGG
# row); as vgg19bn-dce-p40_1xb64_cifar100.py otherwise.
_base_ = './vgg19bn-dce-p40_1xb64_cifar100.py'
model = dict(backbone=dict(ratio=0.9))
