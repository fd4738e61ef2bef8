# Table 1 (CIFAR-10), VGG-19 with 40% of the channels active: dynamic channel execution (CUCB,
# Alg. 1) on the baseline's recipe. Every conv's output channels are arms (16 layers, 5,504
# arms, 2,201 active per step); each step runs the thin active sub-network, inactive channels
# stay as they were. Then the compact export (tools/export_pruned.py) is fine-tuned:
# vgg19bn-dce-p40-ft_1xb64_cifar10.py (random channels instead: vgg19bn-dce-p40-rand-ft_...).
_base_ = './vgg19bn_1xb64_cifar10.py'
model = dict(backbone=dict(type='BanditVGG', ratio=0.4, execution='thin', seed=0))
custom_hooks = [dict(type='ChannelBanditHook')]
