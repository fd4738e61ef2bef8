# ResNet-50 + PiX(Avg) (Pick-or-Mix paper, Table 1 E0 ablation): every group mixes (Avg), no
# picking. Recipe: see resnet50-pix_8xb32_in1k.py.
_base_ = './resnet50-pix_8xb32_in1k.py'

model = dict(backbone=dict(mode='avg'))
