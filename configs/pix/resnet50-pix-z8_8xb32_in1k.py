# ResNet-50 + PiX at zeta = 8 (Pick-or-Mix paper, Table 1 E3): every block's sampling factor x2
# (8 instead of 4; 4 and 2 for layer1.0 and the first blocks of stages 2-4), and the rest of each
# bottleneck at the squeezed width ceil(C / zeta), as the paper's "ResNet-50 zeta = 8" baseline
# (12.3M parameters, 1.38 GMACs at 224x224 here vs the paper's 12.3M, 1.39B). Recipe: see
# resnet50-pix_8xb32_in1k.py.
_base_ = './resnet50-pix_8xb32_in1k.py'

model = dict(backbone=dict(zeta_multiplier=2))
