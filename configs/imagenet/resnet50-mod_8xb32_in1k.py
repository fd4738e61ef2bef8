# ResNet50-MoD on ImageNet (CNN-MoD paper, Table 1): mmpretrain's ResNet-50 recipe with the
# backbone swapped; every other setting is inherited:
# 8 GPUs x 32 = batch 256, SGD lr 0.1, momentum 0.9, wd 1e-4, lr x0.1 at epochs 30/60/90,
# 100 epochs, RandomResizedCrop 224 + flip, test 224 centre crop of the 256 short edge.
# Departure: the paper's exact ImageNet schedule is in its supplementary material, which we do
# not have; this is the standard torchvision/mmpretrain ResNet schedule the paper builds on.
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

# The base's other backbone keys (num_stages=4, out_indices=(3, ), style='pytorch') are
# mmpretrain ResNet arguments that ResNetMoD accepts, so no _delete_ is needed.
model = dict(backbone=dict(type='ResNetMoD', depth=50))
