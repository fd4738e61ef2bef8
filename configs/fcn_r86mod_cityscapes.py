# Alias kept for users and docs that name this path: FCN-R86-MoD on Cityscapes (CNN-MoD paper,
# Table 3). The config itself is configs/cityscapes/fcn_r86-mod-d8_4xb2-80k_cityscapes-512x1024.py.
_base_ = './cityscapes/fcn_r86-mod-d8_4xb2-80k_cityscapes-512x1024.py'
