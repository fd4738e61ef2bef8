# Table 1 (CIFAR-100), ResNet-50 with 90% of the channels: the compact network exported
# from a trained resnet50-dce-p90_1xb64_cifar100 run, fine-tuned with the baseline's recipe
# and a fresh optimizer (load_from carries weights only):
#   python tools/export_pruned.py configs/dce/resnet50-dce-p90_1xb64_cifar100.py \
#       work_dirs/resnet50-dce-p90_1xb64_cifar100/epoch_160.pth \
#       --out-dir work_dirs/resnet50-dce-p90_1xb64_cifar100/pruned
_base_ = './resnet50_1xb64_cifar100.py'

run = 'resnet50-dce-p90_1xb64_cifar100'  # the exported CUCB run
export_dir = f'work_dirs/{run}/pruned/'
model = dict(backbone=dict(type='PrunedResNet', channel_cfg=f'{export_dir}{run}_channels.json'))
load_from = f'{export_dir}{run}_pruned.pth'  # head included
