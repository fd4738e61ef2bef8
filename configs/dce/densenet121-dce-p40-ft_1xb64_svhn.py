# Table 1 (SVHN), DenseNet-121 with 40% of the channels: the compact network exported
# from a trained densenet121-dce-p40_1xb64_svhn run, fine-tuned with the baseline's recipe
# and a fresh optimizer (load_from carries weights only; the head stays the baseline's):
#   python tools/export_pruned.py configs/dce/densenet121-dce-p40_1xb64_svhn.py \
#       work_dirs/densenet121-dce-p40_1xb64_svhn/epoch_20.pth \
#       --out-dir work_dirs/densenet121-dce-p40_1xb64_svhn/pruned
_base_ = './densenet121_1xb64_svhn.py'

run = 'densenet121-dce-p40_1xb64_svhn'  # the exported CUCB run
export_dir = f'work_dirs/{run}/pruned/'
model = dict(backbone=dict(type='PrunedDenseNet', channel_cfg=f'{export_dir}{run}_channels.json'))
load_from = f'{export_dir}{run}_pruned.pth'  # head included
