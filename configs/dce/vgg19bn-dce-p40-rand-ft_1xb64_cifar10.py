# Fig. 3 (CIFAR-10), VGG-19 with 40% of the channels, the random-selection baseline: the same
# trained vgg19bn-dce-p40_1xb64_cifar10 run, its channels for fine-tuning chosen at random
# instead of by mean saliency (Alg. 1 step 12 replaced), then fine-tuned as vgg19bn-dce-p40-ft:
#   python tools/export_pruned.py configs/dce/vgg19bn-dce-p40_1xb64_cifar10.py \
#       work_dirs/vgg19bn-dce-p40_1xb64_cifar10/epoch_160.pth \
#       --out-dir work_dirs/vgg19bn-dce-p40_1xb64_cifar10/pruned --by random
#   python tools/train.py configs/dce/vgg19bn-dce-p40-rand-ft_1xb64_cifar10.py
_base_ = './vgg19bn-dce-p40-ft_1xb64_cifar10.py'

export_dir = 'work_dirs/vgg19bn-dce-p40_1xb64_cifar10/pruned/'
model = dict(
    backbone=dict(
        channel_cfg=export_dir + 'vgg19bn-dce-p40_1xb64_cifar10_random_channels.json'))
load_from = export_dir + 'vgg19bn-dce-p40_1xb64_cifar10_random_pruned.pth'
