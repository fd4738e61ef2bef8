# MobileNetV2-MoD-L (CNN-MoD paper, Table 2): the paper's wider/deeper table (see
# MobileNetV2MoD.arch_zoo['MoD-L']) with MoD blocks. Same recipe as mobilenet-v2-mod.
_base_ = './mobilenet-v2-mod_8xb32_in1k.py'

model = dict(backbone=dict(arch='MoD-L'))
