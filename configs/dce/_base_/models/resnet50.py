# ResNet-50 as Spasov & Lio count it (Table 1): its standard ImageNet stem on 32x32 inputs, BN,
# He init (mmpretrain's), one FC layer; 10 classes (a CIFAR-100 config sets 100).
model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet', depth=50, num_stages=4, out_indices=(3, ), style='pytorch'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=2048,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))
