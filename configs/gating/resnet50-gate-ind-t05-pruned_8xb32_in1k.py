# ResNet-50 pruned with data-independent gates (Herrmann et al., Sec. 4.3.2): the static network
# tools/export_pruned.py writes from a trained resnet50-gate-ind-t05_8xb32_in1k model -- gated-off
# filters removed, outputs equal to the gated model's thresholded at 0.5:
#   python tools/export_pruned.py configs/gating/resnet50-gate-ind-t05_8xb32_in1k.py \
#       work_dirs/resnet50-gate-ind-t05_8xb32_in1k/epoch_100.pth \
#       --out-dir work_dirs/resnet50-gate-ind-t05_8xb32_in1k/pruned
#   python tools/test.py configs/gating/resnet50-gate-ind-t05-pruned_8xb32_in1k.py \
#       work_dirs/resnet50-gate-ind-t05_8xb32_in1k/pruned/resnet50-gate-ind-t05_8xb32_in1k_pruned.pth
# Another export: --cfg-options model.backbone.channel_cfg=DIR/NAME_channels.json load_from=...
# Fine-tuning (tools/train.py, starting from load_from) is not part of the paper, which evaluates
# the thresholded network directly; the short low-lr schedule below is our choice.
_base_ = '../imagenet/resnet50_8xb32_in1k.py'

export_dir = 'work_dirs/resnet50-gate-ind-t05_8xb32_in1k/pruned/'
pruned_channels = export_dir + 'resnet50-gate-ind-t05_8xb32_in1k_channels.json'
pruned_checkpoint = export_dir + 'resnet50-gate-ind-t05_8xb32_in1k_pruned.pth'
model = dict(
    backbone=dict(
        type='PrunedResNet',  # the base's depth=50, out_indices, style stay
        channel_cfg=pruned_channels))
load_from = pruned_checkpoint  # the whole classifier, head included

optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = dict(type='MultiStepLR', by_epoch=True, milestones=[5], gamma=0.1)
train_cfg = dict(by_epoch=True, max_epochs=10, val_interval=1)
