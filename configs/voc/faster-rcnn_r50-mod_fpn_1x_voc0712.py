# Faster R-CNN R50-MoD-FPN (CNN-MoD paper, Table 4): the baseline's recipe (see
# faster-rcnn_r50_fpn_1x_voc0712.py; nothing in it differs from the paper's settings, so nothing
# but the backbone is overridden) with a ResNet-MoD backbone.
#
# The backbone starts from ImageNet weights of the same architecture, trained with
# configs/imagenet/resnet50-mod_8xb32_in1k.py (`python tools/train.py
# configs/imagenet/resnet50-mod_8xb32_in1k.py` writes the checkpoint named below; the path is
# relative to the directory you run the tools from). To use a downloaded model-zoo checkpoint
# instead, pass `--cfg-options model.backbone.init_cfg.checkpoint=PATH_OR_URL`. A missing file
# stops training with mmengine's `FileNotFoundError: <path> can not be found.`
_base_ = 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py'

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

imagenet_checkpoint = 'work_dirs/resnet50-mod_8xb32_in1k/epoch_100.pth'
model = dict(
    backbone=dict(
        # _delete_: drop the base's mmdet ResNet dict (its init_cfg points at
        # torchvision://resnet50, a standard ResNet); every key is given here.
        _delete_=True,
        type='ResNetMoD',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),  # the FPN's four inputs (256, 512, 1024, 2048 channels)
        frozen_stages=1,  # as the base: stem and stage 1 frozen
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,  # as the base: BN statistics frozen (batch 2 per GPU)
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint=imagenet_checkpoint, prefix='backbone.')))
