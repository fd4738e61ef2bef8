# Table 1 (CIFAR-10), ResNet-50 with 30% of the channels active: dynamic channel
# execution (CUCB, Alg. 1) on the baseline's recipe; then export and fine-tune:
# resnet50-dce-p30-ft_1xb64_cifar10.py.
_base_ = './resnet50_1xb64_cifar10.py'
model = dict(backbone=dict(type='BanditResNet', ratio=0.3, execution='thin', seed=0))
custom_hooks = [dict(type='ChannelBanditHook')]
