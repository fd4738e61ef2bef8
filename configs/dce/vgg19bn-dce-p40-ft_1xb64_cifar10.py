# Table 1 (CIFAR-10), VGG-19 with 40% of the channels, second stage (Alg. 1 steps 12-14): the
# compact network tools/export_pruned.py writes from a trained vgg19bn-dce-p40_1xb64_cifar10 run
# (its topology fixed by mean saliency), fine-tuned "by repeating the training procedure"
# (Sec. 3.3): the baseline's recipe with a fresh optimizer (load_from carries weights only).
# The head stays the baseline's 512-wide FC (PrunedVGG puts its last kept channels back at
# their indices of 512), so the export loads strictly.
#   python tools/export_pruned.py configs/dce/vgg19bn-dce-p40_1xb64_cifar10.py \
#       work_dirs/vgg19bn-dce-p40_1xb64_cifar10/epoch_160.pth \
#       --out-dir work_dirs/vgg19bn-dce-p40_1xb64_cifar10/pruned
#   python tools/train.py configs/dce/vgg19bn-dce-p40-ft_1xb64_cifar10.py
# Another export: --cfg-options model.backbone.channel_cfg=DIR/NAME_channels.json load_from=...
_base_ = './vgg19bn_1xb64_cifar10.py'

export_dir = 'work_dirs/vgg19bn-dce-p40_1xb64_cifar10/pruned/'
model = dict(
    backbone=dict(
        type='PrunedVGG',  # the base's depth=19, norm_cfg, conv_cfg, out_indices stay
        channel_cfg=export_dir + 'vgg19bn-dce-p40_1xb64_cifar10_channels.json'))
load_from = export_dir + 'vgg19bn-dce-p40_1xb64_cifar10_pruned.pth'  # head included
