# Table 1 (CIFAR-10), VGG-19 with 70% of the channels: the compact network exported
# from a trained vgg19bn-dce-p70_1xb64_cifar10 run, fine-tuned with the baseline's recipe
# and a fresh optimizer (load_from carries weights only; the head stays the baseline's):
#   python tools/export_pruned.py configs/dce/vgg19bn-dce-p70_1xb64_cifar10.py \
#       work_dirs/vgg19bn-dce-p70_1xb64_cifar10/epoch_160.pth \
#       --out-dir work_dirs/vgg19bn-dce-p70_1xb64_cifar10/pruned
_base_ = './vgg19bn_1xb64_cifar10.py'

run = 'vgg19bn-dce-p70_1xb64_cifar10'  # the exported CUCB run
export_dir = f'work_dirs/{run}/pruned/'
model = dict(backbone=dict(type='PrunedVGG', channel_cfg=f'{export_dir}{run}_channels.json'))
load_from = f'{export_dir}{run}_pruned.pth'  # head included
