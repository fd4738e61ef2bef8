# Fig. 3 (SVHN), ResNet-50 with 30% of the channels, the random-selection baseline: the same
# trained resnet50-dce-p30_1xb64_svhn run, its channels for fine-tuning chosen at random instead
# of by mean saliency (Alg. 1 step 12 replaced), then fine-tuned as resnet50-dce-p30-ft:
#   python tools/export_pruned.py configs/dce/resnet50-dce-p30_1xb64_svhn.py \
#       work_dirs/resnet50-dce-p30_1xb64_svhn/epoch_20.pth \
#       --out-dir work_dirs/resnet50-dce-p30_1xb64_svhn/pruned --by random
#   python tools/train.py configs/dce/resnet50-dce-p30-rand-ft_1xb64_svhn.py
_base_ = './resnet50-dce-p30-ft_1xb64_svhn.py'

export_dir = 'work_dirs/resnet50-dce-p30_1xb64_svhn/pruned/'
model = dict(
    backbone=dict(channel_cfg=export_dir + 'resnet50-dce-p30_1xb64_svhn_random_channels.json'))
load_from = export_dir + 'resnet50-dce-p30_1xb64_svhn_random_pruned.pth'
