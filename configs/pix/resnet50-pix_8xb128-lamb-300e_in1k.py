# ResNet-50 + PiX with the authors' own ImageNet recipe (their release's README:
# github.com/ashishkumar822/PiX): 8 GPUs x 128 = batch 1024, LAMB lr 3.5e-3, wd 0.35, 300 epochs
# cosine, RandAugment rand-m7-mstd0.5-inc1, Mixup 0.1 + CutMix, BCE loss, EMA decay 0.99996.
# mmpretrain's ResNet strikes back A2 recipe is that recipe up to the values overridden here
# (its RandAugment m7 std 0.5, Mixup 0.1 / CutMix 1.0, BCE via use_sigmoid, LAMB, 5-epoch warm-up
# then cosine to 300 epochs).
# Departures: the authors' dropout 0.05 before the classifier is not in mmpretrain's
# LinearClsHead (left out); their AMP is not set (add optim_wrapper.type='AmpOptimWrapper' on
# GPUs); their warm-up length is the timm script's default, we keep the base's 5 epochs.
_base_ = 'mmpretrain::resnet/resnet50_8xb256-rsb-a2-300e_in1k.py'

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

# the base's drop path 0.05 is off: the authors' 0.05 is dropout (see above), not drop path
model = dict(backbone=dict(type='ResNetPiX', depth=50, drop_path_rate=0.0))
train_dataloader = dict(batch_size=128, sampler=dict(type='DefaultSampler', shuffle=True))
optim_wrapper = dict(optimizer=dict(type='Lamb', lr=3.5e-3, weight_decay=0.35))
# EMA decay 0.99996: mmengine's momentum is 1 - decay
custom_hooks = [dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL')]
auto_scale_lr = dict(base_batch_size=1024)
