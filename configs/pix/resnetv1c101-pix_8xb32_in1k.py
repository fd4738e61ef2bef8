# ResNetV1c-101 + PiX on ImageNet: not a row of the paper; it pre-trains the backbone of
# fcn_r101-pix-d8_4xb2-80k_cityscapes-512x1024.py. Recipe: see resnet50-pix_8xb32_in1k.py.
_base_ = './resnet101-pix_8xb32_in1k.py'

model = dict(backbone=dict(type='ResNetV1cPiX'))
