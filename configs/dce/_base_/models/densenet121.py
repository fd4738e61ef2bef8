# DenseNet-121 as Spasov & Lio count it (Table 1): growth 32, blocks 6-12-24-16, bn_size 4,
# compression 0.5, its standard ImageNet stem (7x7/2 conv, 3x3/2 max pool) on 32x32 inputs, BN,
# no dropout, one FC; 10 classes (a CIFAR-100 config sets 100).
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='DenseNet', arch='121', out_indices=(3, ),
        # He init (fan_out, as mmpretrain's ResNet): mmpretrain's DenseNet has no init_cfg of
        # its own, so it would keep PyTorch's default (kaiming_uniform with a=sqrt(5)).
        init_cfg=[dict(type='Kaiming', layer='Conv2d'),
                  dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])]),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=1024,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))
