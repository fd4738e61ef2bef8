# MobileNetV2-MoD (CNN-MoD paper, Table 2): the standard MobileNetV2 table with every second
# inverted residual of a stage replaced by a MoD block (c = 16).
# Departure: the paper's MobileNetV2 schedule is in its supplementary material, which we do not
# have; we keep mmpretrain's own MobileNetV2 recipe (lr 0.045, wd 4e-5, x0.98 per epoch,
# 300 epochs) rather than the ResNet one, so baseline and MoD share one schedule.
_base_ = 'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py'

custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)

# The base's backbone is dict(type='MobileNetV2', widen_factor=1.0); widen_factor is a
# MobileNetV2MoD argument too. The last conv still gives 1280 channels (head unchanged).
model = dict(backbone=dict(type='MobileNetV2MoD', arch='MoD'))
