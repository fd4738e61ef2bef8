# ResNet-50 + PiX on ImageNet (Pick-or-Mix paper, Table 1 E0): the ResNet-50 baseline recipe of
# configs/imagenet/ (mmpretrain's: batch 256, SGD lr 0.1, momentum 0.9, wd 1e-4, lr x0.1 every
# 30 epochs, 100 epochs) with the backbone swapped, so its row compares with the CNN-MoD configs.
# Departure: the paper trains with the authors' own recipe (LAMB, 300 epochs, see
# resnet50-pix_8xb128-lamb-300e_in1k.py); this is the common recipe of mmmod's ImageNet rows.
_base_ = '../imagenet/resnet50_8xb32_in1k.py'

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

# The base's other backbone keys (num_stages=4, out_indices=(3, ), style='pytorch') are
# mmpretrain ResNet arguments that ResNetPiX accepts, so no _delete_ is needed.
model = dict(backbone=dict(type='ResNetPiX', depth=50))
