# ResNetV1c-50 + PiX on ImageNet: not a row of the paper; it pre-trains the backbone of
# fcn_r50-pix-d8_4xb2-80k_cityscapes-512x1024.py (mmseg's FCN uses the V1c deep stem).
# Recipe: see resnet50-pix_8xb32_in1k.py.
_base_ = './resnet50-pix_8xb32_in1k.py'

model = dict(backbone=dict(type='ResNetV1cPiX'))
