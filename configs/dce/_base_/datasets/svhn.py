# SVHN as Spasov & Lio train it (Sec. 3.1, 3.3): train + extra (604,388 images), the test set
# for validation, inputs normalised by the channel means and stds, pad-4 crop + flip, batch 64.
# The paper flips SVHN too ("a 32x32 patch" cropped and flipped for all datasets); digits are
# not flip-invariant, so this is the paper's choice, kept. mmmod's SVHN reads the official
# train/test/extra_32x32.mat files.
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
