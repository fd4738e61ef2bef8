# Table 2 (CIFAR-10), VGG-19 with 40% of the channels, single-stage training (Sec. 3.4): CUCB
# selection first, then the topology is fixed by mean saliency (Alg. 1 step 12) and the same
# model trains on to the end -- no export, no second run. The paper switches after "the first
# 40 iterations"; read as epochs (a quarter of the 160, as resnet50-dce-p30-single_1xb64_svhn
# reads it): 40 steps would fix the topology from the saliencies of 2,560 images.
_base_ = './vgg19bn-dce-p40_1xb64_cifar10.py'
custom_hooks = [dict(type='ChannelBanditHook', fix_at_epoch=40)]
