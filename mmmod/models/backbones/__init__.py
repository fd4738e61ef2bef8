from .bandit_densenet import BanditDenseNet
from .bandit_resnet import BanditResNet
from .bandit_vgg import BanditVGG
from .gated_mobilenet_v2 import GatedMobileNetV2
from .gated_resnet import GatedResNet, GatedResNetV1c
from .mobilenet_v2_mod import MobileNetV2MoD
from .pruned_densenet import PrunedDenseNet
from .pruned_mobilenet_v2 import PrunedMobileNetV2
from .pruned_resnet import PrunedResNet, PrunedResNetV1c
from .pruned_vgg import PrunedVGG
from .resnet_mod import ResNetMoD, ResNetV1cMoD
from .resnet_pix import ResNetPiX, ResNetV1cPiX

__all__ = [
    'GatedResNet', 'GatedResNetV1c', 'GatedMobileNetV2',
    'PrunedResNet', 'PrunedResNetV1c', 'PrunedMobileNetV2',
    'ResNetMoD', 'ResNetV1cMoD', 'MobileNetV2MoD', 'ResNetPiX', 'ResNetV1cPiX',
    'BanditResNet', 'BanditVGG', 'PrunedVGG', 'BanditDenseNet', 'PrunedDenseNet']
