"""ResNet with Pick-or-Mix channel squeezing (Kumar et al., "Pick-or-Mix", CVPR 2024, Sec. 3.5.1).

In every bottleneck, :class:`~mmmod.models.layers.PiX` replaces the 1x1 squeeze conv together with
its norm and activation (no norm follows PiX); conv2, conv3 and the shortcut stay::

    x (N, C, H, W) -> PiX(C -> ceil(C / zeta)) -> conv2 3x3 -> bn2 -> relu -> conv3 1x1 -> bn3
      |                                                                                  + -> relu
      +-------------------------------- identity / downsample ----------------------------+

zeta of a block is the squeeze ratio of the conv it replaces, ``in_channels // mid_channels``:
1 for layer1.0 (64 -> 64, PiX becomes a per-channel gate), 2 for the first block of stages 2-4,
4 elsewhere -- times the backbone's global ``zeta_multiplier``. With ``zeta_multiplier = 1`` the
network has ResNet's widths and, since the FC of PiX (C -> C / zeta) has as many weights as the
conv it replaces, ResNet's parameter count (Table 1: 25.5M for ResNet-50 + PiX).

``zeta_multiplier = 2`` gives Table 1 E3 (zeta = 8 in every block but the first of a stage). We
read E3 as *the whole bottleneck at width ceil(C / zeta)*: conv2 is ceil(C / zeta) ->
ceil(C / zeta) and conv3 reads ceil(C / zeta) channels. That is what the table's numbers say: its
baseline "ResNet-50 zeta = 8" has 12.3M parameters and PiX keeps the parameters of its baseline
(12.3M); halving the mid width of every ResNet-50 bottleneck gives 12.3M, while narrowing only
conv2's input would leave 17.7M. This is also how PiX downscales networks (Table 3).

Everything else is mmpretrain's ResNet: stem, shortcut, state-dict names of the standard parts
(``layerX.Y.conv2``, ``bn2``, ``conv3``, ``bn3``, ``downsample``), ``out_indices``,
``frozen_stages`` (the PiX predictors of a frozen stage freeze with it), ``norm_eval``,
``zero_init_residual``, ``init_cfg``, deep stem, dilations and ``style``.
"""
import torch
import torch.nn as nn
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmpretrain.models.backbones.resnet import Bottleneck

from mmmod.registry import MODELS
from ..layers.channel_structure import forward_block, structure_of
from ..layers.pix import PiX, _check_pix_args
from .base import ResNetBase, V1cStem, resnet_arch_settings


class PiXBottleneck(Bottleneck):
    """mmpretrain's Bottleneck with PiX in place of conv1 + norm1 + activation: upstream's
    channel structure (:data:`~mmmod.models.layers.channel_structure.BOTTLENECK`) with its
    ``conv1`` step replaced by :meth:`squeeze`.

    Args:
        zeta_multiplier (int): global multiplier of the block's squeeze ratio. Default 1.
        tau (float): PiX threshold. Default 0.5.
        mode (str): ``'pix'``, ``'avg'`` or ``'max'``. Default ``'pix'``.
        **kwargs: mmpretrain's ``Bottleneck`` arguments.

    With ``style='caffe'`` the stride sat on the replaced 1x1 conv; a strided 1x1 conv reads
    every s-th pixel, so PiX samples ``x[:, :, ::s, ::s]``.

    Shapes:
        x: (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride)
    """

    def __init__(self, in_channels: int, out_channels: int, zeta_multiplier: int = 1,
                 tau: float = 0.5, mode: str = 'pix', **kwargs):
        _check_pix_args(zeta_multiplier, tau, mode)
        super().__init__(in_channels, out_channels, **kwargs)
        if in_channels % self.mid_channels:
            raise ValueError(f'PiX replaces a squeeze conv {in_channels} -> {self.mid_channels}, '
                             'whose ratio must be an integer (zeta); set base_channels/'
                             'stem_channels so that in_channels is a multiple of mid_channels')
        self.zeta = in_channels // self.mid_channels * zeta_multiplier
        # PiX replaces conv1 + norm1 (+ their activation): drop them so their names stay free.
        del self.conv1
        delattr(self, self.norm1_name)
        self.pix = PiX(in_channels, self.zeta, tau, mode)
        width = self.pix.out_channels  # ceil(C / zeta) == mid_channels when the multiplier is 1
        if width != self.mid_channels:  # downscaled (Table 1 E3): the whole branch at width
            self.mid_channels = width
            self.conv2 = build_conv_layer(self.conv_cfg, width, width, kernel_size=3,
                                          stride=self.conv2_stride, padding=self.dilation,
                                          dilation=self.dilation, bias=False)
            self.add_module(self.norm2_name, build_norm_layer(self.norm_cfg, width)[1])
            self.conv3 = build_conv_layer(self.conv_cfg, width, out_channels, kernel_size=1,
                                          bias=False)
        # upstream's Bottleneck description with its conv1 step (conv1, norm1, relu) replaced
        self.channel_structure = structure_of(self).replace_step(
            'conv1', unit='squeeze', conv=None, norm=None, act=None)

    @property
    def norm1(self):
        raise AttributeError(f'{type(self).__name__} has no norm1: PiX replaces conv1 + norm1')

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        """The replaced step: PiX on x (N, C, H, W) -> (N, G, H / s, W / s), s the stride the
        caffe-style conv1 had (every s-th pixel, as a strided 1x1 conv reads)."""
        s = self.conv1_stride
        return self.pix(x if s == 1 else x[:, :, ::s, ::s])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        return forward_block(self, x)


@MODELS.register_module()
class ResNetPiX(ResNetBase):
    """ResNet-PiX backbone (ResNet-50/101/152 with PiX channel squeezing).

    Args:
        depth (int): 50, 101 or 152.
        zeta_multiplier (int): global multiplier of every block's sampling factor zeta (see
            the module docstring); 1 (default) is the paper's ResNet + PiX, 2 its zeta = 8
            variant (Table 1 E3).
        tau (float): PiX threshold in (0, 1). Default 0.5.
        mode (str): ``'pix'`` (default), ``'avg'`` or ``'max'`` (Table 1's PiX(Avg), PiX(Max)).
        contract_dilation, pretrained, **kwargs: as
            :class:`~mmmod.models.backbones.base.ResNetBase` (mmseg's dilation rule, mmseg's
            ``pretrained``, everything of mmpretrain's ``ResNet``).

    Shapes:
        x: (N, in_channels, H, W) -> tuple of (N, C_i, H / s_i, W / s_i) for i in out_indices.

    Example:
        >>> model = ResNetPiX(depth=50, out_indices=(0, 1, 2, 3)).eval()
        >>> for out in model(torch.rand(1, 3, 224, 224)):
        ...     print(tuple(out.shape))
        (1, 256, 56, 56)
        (1, 512, 28, 28)
        (1, 1024, 14, 14)
        (1, 2048, 7, 7)
        >>> [model.layer1[0].pix.zeta, model.layer2[0].pix.zeta, model.layer2[1].pix.zeta]
        [1, 2, 4]
    """

    # the bottleneck depths of mmpretrain's ResNet
    arch_settings = resnet_arch_settings(dict(bottleneck=PiXBottleneck), (50, 101, 152))

    def __init__(self,
                 depth: int,
                 zeta_multiplier: int = 1,
                 tau: float = 0.5,
                 mode: str = 'pix',
                 contract_dilation: bool = False,
                 pretrained=None,
                 **kwargs):
        self.arch_of(depth)
        _check_pix_args(zeta_multiplier, tau, mode)
        self.zeta_multiplier = zeta_multiplier
        self.tau = tau
        self.mode = mode
        super().__init__(depth, contract_dilation, pretrained, **kwargs)

    def make_block(self, stage: int, index: int, block: type, **kwargs) -> nn.Module:
        """A PiX bottleneck with the global multiplier, threshold and mode."""
        return block(zeta_multiplier=self.zeta_multiplier, tau=self.tau, mode=self.mode, **kwargs)


@MODELS.register_module()
class ResNetV1cPiX(V1cStem, ResNetPiX):
    """ResNetPiX with the V1c deep stem (three 3x3 convs), the mmseg FCN backbone."""
