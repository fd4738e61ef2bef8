# ResNet50-MoD-lk (CNN-MoD paper, Table 1): processed channels are added to the *last* k
# channels instead of the first k (Sec. 3.3; the paper reports comparable accuracy).
_base_ = './resnet50-mod_8xb32_in1k.py'

model = dict(backbone=dict(fusion='last'))
