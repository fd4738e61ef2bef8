# Table 1 (SVHN), ResNet-50 with 30% of the channels, second stage (Alg. 1 steps 12-14): the
# compact network tools/export_pruned.py writes from a trained resnet50-dce-p30_1xb64_svhn run
# (its topology fixed by mean saliency), fine-tuned "by repeating the training procedure"
# (Sec. 3.3): the baseline's recipe with a fresh optimizer (load_from carries weights only).
#   python tools/export_pruned.py configs/dce/resnet50-dce-p30_1xb64_svhn.py \
#       work_dirs/resnet50-dce-p30_1xb64_svhn/epoch_20.pth \
#       --out-dir work_dirs/resnet50-dce-p30_1xb64_svhn/pruned
#   python tools/train.py configs/dce/resnet50-dce-p30-ft_1xb64_svhn.py
# Another export: --cfg-options model.backbone.channel_cfg=DIR/NAME_channels.json load_from=...
_base_ = './resnet50_1xb64_svhn.py'

export_dir = 'work_dirs/resnet50-dce-p30_1xb64_svhn/pruned/'
model = dict(
    backbone=dict(
        type='PrunedResNet',  # the base's depth=50, out_indices, style stay
        channel_cfg=export_dir + 'resnet50-dce-p30_1xb64_svhn_channels.json'))
load_from = export_dir + 'resnet50-dce-p30_1xb64_svhn_pruned.pth'  # head included
