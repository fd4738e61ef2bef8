# FCN-R50-MoD (CNN-MoD paper, Table 3): the FCN-R50 baseline's recipe (see
# fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py; nothing in it differs from the paper's settings,
# so nothing but the backbone is overridden) with a ResNetV1c-MoD backbone.
#
# The backbone starts from ImageNet weights of the *same* architecture, trained with
# configs/imagenet/resnetv1c50-mod_8xb32_in1k.py (`python tools/train.py
# configs/imagenet/resnetv1c50-mod_8xb32_in1k.py` writes the checkpoint named below; the path is
# relative to the directory you run the tools from). To use a downloaded model-zoo checkpoint
# instead, pass `--cfg-options model.backbone.init_cfg.checkpoint=PATH_OR_URL`. A missing file
# stops training with mmengine's `FileNotFoundError: <path> can not be found.`; to train from
# scratch, pass `--cfg-options model.backbone.init_cfg=None`.
_base_ = 'mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py'

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

imagenet_checkpoint = 'work_dirs/resnetv1c50-mod_8xb32_in1k/epoch_100.pth'
model = dict(
    # mmseg copies model.pretrained (base: open-mmlab://resnet50_v1c, a *standard* ResNetV1c)
    # into the backbone; the MoD backbone's weights come from init_cfg below instead.
    pretrained=None,
    backbone=dict(
        # _delete_: drop the base's type='ResNetV1c' dict; every key is given here.
        _delete_=True,
        type='ResNetV1cMoD',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),  # stage 3 feeds the auxiliary head, stage 4 the FCN head
        dilations=(1, 1, 2, 4),  # "d8": output stride 8
        strides=(1, 2, 1, 1),
        contract_dilation=True,
        norm_cfg=dict(type='SyncBN', requires_grad=True),  # base's norm_cfg; tools/ switch it
        norm_eval=False,  # to BN for CPU multi-process runs
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint=imagenet_checkpoint, prefix='backbone.')))
