# FCN-R50 + PiX on Cityscapes: the FCN-R50 baseline's recipe of configs/cityscapes/ (mmseg's, see
# fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py there) with a ResNetV1c-PiX backbone, so its row
# compares with the CNN-MoD FCN configs. (The paper's own segmentation row, Table 8 E1, is
# PSPNet-R101 + PiX; mmseg's PSPNet recipe takes the same backbone dict.)
#
# The backbone starts from ImageNet weights of the same architecture, trained with
# configs/pix/resnetv1c50-pix_8xb32_in1k.py (`python tools/train.py
# configs/pix/resnetv1c50-pix_8xb32_in1k.py` writes the checkpoint named below). Pass
# `--cfg-options model.backbone.init_cfg.checkpoint=PATH_OR_URL` to use another file, or
# `model.backbone.init_cfg=None` to train from scratch.
_base_ = '../cityscapes/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py'

imagenet_checkpoint = 'work_dirs/resnetv1c50-pix_8xb32_in1k/epoch_100.pth'
model = dict(
    # mmseg copies model.pretrained (a *standard* ResNetV1c) into the backbone; the PiX
    # backbone's weights come from init_cfg below instead.
    pretrained=None,
    backbone=dict(
        _delete_=True,  # drop the base's type='ResNetV1c' dict; every key is given here
        type='ResNetV1cPiX',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),  # stage 3 feeds the auxiliary head, stage 4 the FCN head
        dilations=(1, 1, 2, 4),  # "d8": output stride 8
        strides=(1, 2, 1, 1),
        contract_dilation=True,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint=imagenet_checkpoint, prefix='backbone.')))
