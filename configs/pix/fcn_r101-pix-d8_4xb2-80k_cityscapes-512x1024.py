# FCN-R101 + PiX on Cityscapes: fcn_r50-pix-d8_4xb2-80k_cityscapes-512x1024.py at depth 101
# (mmseg's FCN-R101 recipe is the R50 one at depth 101), its backbone pre-trained with
# configs/pix/resnetv1c101-pix_8xb32_in1k.py.
_base_ = './fcn_r50-pix-d8_4xb2-80k_cityscapes-512x1024.py'

imagenet_checkpoint = 'work_dirs/resnetv1c101-pix_8xb32_in1k/epoch_100.pth'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained', checkpoint=imagenet_checkpoint, prefix='backbone.')))
