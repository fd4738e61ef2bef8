# VGG-19 as Spasov & Lio count it (Table 1): "of type VGG-E with a single FC layer (16 conv + 1
# FC)", BN, no dropout -- mmpretrain's VGG without its 4096-wide classifier, then global average
# pooling and one FC. 10 classes (a CIFAR-100 config sets 100).
# Conv biases: mmpretrain's VGG builds its convs with bias=True before BN (which cancels them);
# the paper's count has none, so the convs are BiasFreeConv2d (5,504 parameters fewer).
# Init (He et al.): mmpretrain's VGG init_cfg is already Kaiming (He) normal, fan_out, for the
# convs and BN weight 1 / bias 0; only the FC differs (LinearClsHead's Normal, std 0.01), kept.
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VGG',
        depth=19,
        num_classes=-1,  # no 4096-wide classifier: the head is the single FC
        norm_cfg=dict(type='BN'),
        conv_cfg=dict(type='BiasFreeConv2d'),
        out_indices=(4, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=512,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )))
