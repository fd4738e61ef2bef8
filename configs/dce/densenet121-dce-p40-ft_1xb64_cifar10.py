# Table 1 (CIFAR-10), DenseNet-121 with 40% of the channels: the compact network exported
# from a trained densenet121-dce-p40_1xb64_cifar10 run, fine-tuned with the baseline's recipe
# and a fresh optimizer (load_from carries weights only; the head stays the baseline's):
#   python tools/export_pruned.py configs/dce/densenet121-dce-p40_1xb64_cifar10.py \
#       work_dirs/densenet121-dce-p40_1xb64_cifar10/epoch_160.pth \
#       --out-dir work_dirs/densenet121-dce-p40_1xb64_cifar10/pruned
_base_ = './densenet121_1xb64_cifar10.py'

run = 'densenet121-dce-p40_1xb64_cifar10'  # the exported CUCB run
export_dir = f'work_dirs/{run}/pruned/'
model = dict(backbone=dict(type='PrunedDenseNet', channel_cfg=f'{export_dir}{run}_channels.json'))
load_from = f'{export_dir}{run}_pruned.pth'  # head included
