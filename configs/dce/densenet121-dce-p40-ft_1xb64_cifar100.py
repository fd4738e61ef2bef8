# Table 1 (CIFAR-100), DenseNet-121 with 40% of the channels, second stage (Alg. 1 steps 12-14):
# the compact network tools/export_pruned.py writes from a trained densenet121-dce-p40_1xb64_
# cifar100 run (its topology fixed by mean saliency), fine-tuned "by repeating the training
# procedure" (Sec. 3.3): the baseline's recipe with a fresh optimizer (load_from: weights only).
#   python tools/export_pruned.py configs/dce/densenet121-dce-p40_1xb64_cifar100.py \
#       work_dirs/densenet121-dce-p40_1xb64_cifar100/epoch_160.pth --shape 32 \
#       --out-dir work_dirs/densenet121-dce-p40_1xb64_cifar100/pruned
#   python tools/train.py configs/dce/densenet121-dce-p40-ft_1xb64_cifar100.py
# The backbone output keeps DenseNet's 1024 channels (zeros at removed ones): the head is the
# baseline's. Another export: --cfg-options model.backbone.channel_cfg=... load_from=...
_base_ = './densenet121_1xb64_cifar100.py'

export_dir = 'work_dirs/densenet121-dce-p40_1xb64_cifar100/pruned/'
model = dict(
    backbone=dict(
        type='PrunedDenseNet',  # the base's arch='121', out_indices stay
        channel_cfg=export_dir + 'densenet121-dce-p40_1xb64_cifar100_channels.json'))
load_from = export_dir + 'densenet121-dce-p40_1xb64_cifar100_pruned.pth'  # head included
