# Table 1 (SVHN), VGG-19 with 80% of the channels active (the paper's best SVHN VGG row); as
# vgg19bn-dce-p40_1xb64_svhn.py otherwise.
_base_ = './vgg19bn-dce-p40_1xb64_svhn.py'
model = dict(backbone=dict(ratio=0.8))
