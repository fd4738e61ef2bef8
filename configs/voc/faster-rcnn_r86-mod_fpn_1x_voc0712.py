# Faster R-CNN R86-MoD-FPN (CNN-MoD paper, Table 4): the R50-MoD config at depth 86; the
# backbone starts from configs/imagenet/resnet86-mod_8xb32_in1k.py's checkpoint (see the R50-MoD
# config for the model-zoo alternative and what happens when the file is missing).
_base_ = './faster-rcnn_r50-mod_fpn_1x_voc0712.py'

model = dict(
    backbone=dict(
        depth=86,
        init_cfg=dict(checkpoint='work_dirs/resnet86-mod_8xb32_in1k/epoch_100.pth')))
