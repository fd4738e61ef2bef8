# FCN-R75-MoD (CNN-MoD paper, Table 3): fcn_r50-mod-d8 at depth 75; the backbone starts from
# configs/imagenet/resnetv1c75-mod_8xb32_in1k.py's checkpoint (see the R50-MoD config for the
# model-zoo alternative and what happens when the file is missing).
_base_ = './fcn_r50-mod-d8_4xb2-80k_cityscapes-512x1024.py'

model = dict(
    backbone=dict(
        depth=75,
        init_cfg=dict(checkpoint='work_dirs/resnetv1c75-mod_8xb32_in1k/epoch_100.pth')))
