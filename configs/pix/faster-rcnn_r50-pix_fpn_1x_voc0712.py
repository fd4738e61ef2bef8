# Faster R-CNN R50 + PiX -FPN on PASCAL VOC: the baseline's recipe of configs/voc/ (mmdet's, see
# faster-rcnn_r50_fpn_1x_voc0712.py there) with a ResNet-PiX backbone, so its row compares with
# the CNN-MoD detection configs (the Pick-or-Mix paper has no detection experiment).
#
# The backbone starts from ImageNet weights of the same architecture, trained with
# configs/pix/resnet50-pix_8xb32_in1k.py (`python tools/train.py
# configs/pix/resnet50-pix_8xb32_in1k.py` writes the checkpoint named below). Pass
# `--cfg-options model.backbone.init_cfg.checkpoint=PATH_OR_URL` to use another file.
_base_ = '../voc/faster-rcnn_r50_fpn_1x_voc0712.py'

imagenet_checkpoint = 'work_dirs/resnet50-pix_8xb32_in1k/epoch_100.pth'
model = dict(
    backbone=dict(
        _delete_=True,  # drop the base's mmdet ResNet dict (torchvision://resnet50 init_cfg)
        type='ResNetPiX',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),  # the FPN's four inputs (256, 512, 1024, 2048 channels)
        frozen_stages=1,  # as the base: stem and stage 1 (incl. its PiX predictors) frozen
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,  # as the base: BN statistics frozen (batch 2 per GPU)
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint=imagenet_checkpoint, prefix='backbone.')))
