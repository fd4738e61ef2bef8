# Table 1 (SVHN) baseline of dynamic channel execution (Spasov & Lio): ResNet-50 with its standard
# ImageNet stem on 32x32 inputs, BN, He init (mmpretrain's), one FC layer: 23.52 M parameters
# with the 10-way head. The recipe of Sec. 3.1 / 3.3 follows.
_base_ = 'mmpretrain::_base_/default_runtime.py'
custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet', depth=50, num_stages=4, out_indices=(3, ), style='pytorch'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=2048,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))

# SVHN as Spasov & Lio train it (Sec. 3.1, 3.3): train + extra (604,388 images), the test set
# for validation, inputs normalised by the channel means and stds, pad-4 crop + flip, batch 64.
# The paper flips SVHN too ("a 32x32 patch" cropped and flipped for all datasets); digits are
# not flip-invariant, so this is the paper's choice, kept.
dataset_type = 'SVHN'
data_root = 'data/svhn/'
data_preprocessor = dict(
    num_classes=10,
    # SVHN channel statistics (RGB, 0-255; the values commonly quoted for the train split)
    mean=[111.61, 113.16, 120.57],
    std=[50.50, 51.26, 50.24],
    to_rgb=False)  # the .mat files hold RGB

train_pipeline = [
    dict(type='RandomCrop', crop_size=32, padding=4),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=64,
    num_workers=2,
    dataset=dict(type=dataset_type, data_root=data_root, split='train+extra',
                 pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=64,
    num_workers=2,
    dataset=dict(type=dataset_type, data_root=data_root, split='test', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

# Spasov & Lio Sec. 3.3: SGD, Nesterov momentum 0.9 without dampening, weight decay 1e-4,
# lr 0.1 divided by 10 at 50% and 75% of the epochs (set max_epochs and the milestones
# together: 160 / [80, 120] on CIFAR, 20 / [10, 15] on SVHN).
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, dampening=0, nesterov=True,
                   weight_decay=1e-4))
max_epochs = 20
param_scheduler = dict(type='MultiStepLR', by_epoch=True, milestones=[10, 15], gamma=0.1)
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=64)
