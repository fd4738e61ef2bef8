# Table 1 (CIFAR-100), DenseNet-121 with 90% of the channels active: dynamic channel
# execution (CUCB, Alg. 1) on the baseline's recipe. Arms are the outputs of every conv (stem,
# each dense layer's 1x1 and 3x3, each transition): no residual add ties a DenseNet width. Each
# step runs the thin active sub-network (channels removed after each reader's BN-ReLU), inactive
# channels stay as they were. Then tools/export_pruned.py writes the compact PrunedDenseNet to
# fine-tune (densenet121-dce-p40-ft_1xb64_cifar100.py shows how).
_base_ = './densenet121_1xb64_cifar100.py'
model = dict(backbone=dict(type='BanditDenseNet', ratio=0.9, execution='thin', seed=0))
custom_hooks = [dict(type='ChannelBanditHook')]
