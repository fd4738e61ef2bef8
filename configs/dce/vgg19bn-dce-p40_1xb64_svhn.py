# Table 1 (SVHN), VGG-19 with 40% of the channels active: dynamic channel execution (CUCB,
# Alg. 1) on the SVHN baseline's recipe (as vgg19bn-dce-p40_1xb64_cifar10.py); export and
# fine-tune as the CIFAR-10 -ft config does.
_base_ = './vgg19bn_1xb64_svhn.py'
model = dict(backbone=dict(type='BanditVGG', ratio=0.4, execution='thin', seed=0))
custom_hooks = [dict(type='ChannelBanditHook')]
