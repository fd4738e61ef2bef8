# ResNet50-MoD on ImageNet (CNN-MoD paper, Table 1): the standard mmpretrain ResNet recipe
# (8 GPUs x 32 = batch 256, SGD lr 0.1, momentum 0.9, wd 1e-4, x0.1 every 30 epochs, 100 epochs)
# with the backbone swapped; every other setting is inherited.
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

model = dict(backbone=dict(type='ResNetMoD', depth=50))
