# Table 1 (SVHN), ResNet-50 with 30% of the channels active: dynamic channel execution (CUCB,
# Alg. 1) on the baseline's recipe. Arms are the stem and conv1/conv2 of every bottleneck (the
# residual adds tie the rest); each step runs the thin active sub-network, inactive channels
# stay as they were. Then the compact export (tools/export_pruned.py) is fine-tuned:
# resnet50-dce-p30-ft_1xb64_svhn.py (random channels instead: resnet50-dce-p30-rand-ft_...).
_base_ = './resnet50_1xb64_svhn.py'
model = dict(backbone=dict(type='BanditResNet', ratio=0.3, execution='thin', seed=0))
custom_hooks = [dict(type='ChannelBanditHook')]
