from .mobilenet_v2_mod import MobileNetV2MoD
from .resnet_mod import ResNetMoD, ResNetV1cMoD

__all__ = ['ResNetMoD', 'ResNetV1cMoD', 'MobileNetV2MoD']
