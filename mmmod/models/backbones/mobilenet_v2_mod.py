"""MobileNetV2 with CNN Mixture-of-Depths blocks (Cakaj et al., ACCV 2024, Table 2).

In every row of the MobileNetV2 table, blocks 1, 3, ... become :class:`MoDBlock` s whose slim
branch is an inverted residual k -> t*k -> k with ``k = floor(C / 16)`` (c = 16, Sec. 3.2).
Stem, standard blocks, ``conv2`` and the backbone contract are mmpretrain's MobileNetV2.
"""
from typing import Sequence, Union

import torch
import torch.nn as nn
from mmpretrain.models.backbones.mobilenet_v2 import InvertedResidual

from mmmod.registry import MODELS
from ..layers import MoDBlock, num_selected_channels
from ..layers.channel_structure import slim_branch
from ._mod_utils import mod_block_masks
from .base import MobileNetV2Base


def inverted_residual_branch(k: int, expand_ratio: int, conv_cfg=None,
                             norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU6')):
    """Inverted residual branch at width k: (N, k, H, W) -> (N, k, H, W), stride 1 -- the
    block's own description (:func:`~mmmod.models.layers.channel_structure.slim_branch`) at
    the stream width k and the expansion width ``round(k * t)``."""
    with torch.device('meta'):  # only its geometry is read
        reference = InvertedResidual(8, 8, stride=1, expand_ratio=expand_ratio,
                                     act_cfg=act_cfg)
    widths = dict(input=k, expand=int(round(k * expand_ratio)), output=k)
    if expand_ratio == 1:
        widths['expand'] = k  # t = 1: the branch reads x as its expand set
    return slim_branch(reference, widths, conv_cfg, norm_cfg)


@MODELS.register_module()
class MobileNetV2MoD(MobileNetV2Base):
    """MobileNetV2-MoD backbone.

    Args:
        arch (str | list): ``'MoD'`` (the standard MobileNetV2 table), ``'MoD-L'`` (the paper's
            deeper variant) or a custom table of ``[t, c, n, s]`` rows (``MOBILENET_V2_ARCHS``
            of :mod:`~mmmod.models.backbones.base`).
        channel_reduction (int): the paper's c in ``k = floor(C / c)`` (the extent of channel
            reduction). Default 16.
        mod_pattern, fusion, selection, selector_reduction: as in
            :class:`~mmmod.models.ResNetMoD`.
        **kwargs: as :class:`~mmmod.models.backbones.base.MobileNetV2Base` (pretrained and
            mmpretrain's ``MobileNetV2``).

    Shapes:
        x: (N, 3, H, W) -> tuple of feature maps for out_indices (7 = conv2, (N, 1280, H/32, W/32)).

    Example:
        >>> model = MobileNetV2MoD(arch='MoD').eval()
        >>> print(tuple(model(torch.rand(1, 3, 224, 224))[-1].shape))
        (1, 1280, 7, 7)
    """

    def __init__(self,
                 arch: Union[str, Sequence[Sequence[int]]] = 'MoD',
                 channel_reduction: int = 16,
                 mod_pattern: Union[str, Sequence[Sequence[int]]] = 'alternate',
                 fusion: str = 'first',
                 selection: str = 'topk',
                 selector_reduction: int = 16,
                 **kwargs):
        table = self.resolve_arch(arch)
        num_selected_channels(1, channel_reduction)  # validates c before anything is built
        # Read by make_block, which MobileNetV2.__init__ reaches once per block.
        self._mod_masks = mod_block_masks([row[2] for row in table], mod_pattern)
        self._mod_cfg = dict(fusion=fusion, selection=selection,
                             selector_reduction=selector_reduction)
        self.channel_reduction = channel_reduction
        self.mod_pattern = mod_pattern
        super().__init__(table, **kwargs)

    def make_block(self, stage: int, index: int, **kwargs) -> nn.Module:
        """Block ``index`` of table row ``stage``: a MoD block where the mask says so."""
        if not self._mod_masks[stage][index]:
            return InvertedResidual(**kwargs)
        out_channels = kwargs['out_channels']
        k = num_selected_channels(out_channels, self.channel_reduction)
        branch = inverted_residual_branch(k, kwargs['expand_ratio'], kwargs['conv_cfg'],
                                          kwargs['norm_cfg'], kwargs['act_cfg'])
        return MoDBlock(out_channels, k, branch, **self._mod_cfg)
