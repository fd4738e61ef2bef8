"""MobileNetV2 with CNN Mixture-of-Depths blocks (Cakaj et al., ACCV 2024, Table 2).

In every row of the MobileNetV2 table, blocks 1, 3, ... become :class:`MoDBlock` s whose slim
branch is an inverted residual k -> t*k -> k with ``k = floor(C / 16)`` (c = 16, Sec. 3.2).
Stem, standard blocks, ``conv2`` and the backbone contract are mmpretrain's MobileNetV2.
"""
from typing import Sequence, Union

import torch  # noqa: F401  (used by the doctest examples)
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmpretrain.models.backbones.mobilenet_v2 import InvertedResidual, MobileNetV2

from mmmod.registry import MODELS
from ..layers import MoDBlock, num_selected_channels
from ._mod_utils import MoDBackboneMixin, mod_block_masks


def inverted_residual_branch(k: int, expand_ratio: int, conv_cfg=None,
                             norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU6')):
    """Inverted residual branch at width k: (N, k, H, W) -> (N, k, H, W), stride 1."""
    hidden = int(round(k * expand_ratio))
    layers = []
    if expand_ratio != 1:
        layers.append(ConvModule(k, hidden, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                 act_cfg=act_cfg))  # pw
    layers += [
        ConvModule(hidden, hidden, 3, padding=1, groups=hidden, conv_cfg=conv_cfg,
                   norm_cfg=norm_cfg, act_cfg=act_cfg),  # dw
        ConvModule(hidden, k, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=None),  # pw-linear
    ]
    return nn.Sequential(*layers)


@MODELS.register_module()
class MobileNetV2MoD(MoDBackboneMixin, MobileNetV2):
    """MobileNetV2-MoD backbone.

    Args:
        arch (str | list): ``'MoD'`` (the standard MobileNetV2 table), ``'MoD-L'`` (the paper's
            deeper variant) or a custom table of ``[t, c, n, s]`` rows.
        mod_c (int): c of ``k = floor(C / c)``. Default 16.
        mod_pattern, fusion, selection, selector_reduction: as in
            :class:`~mmmod.models.ResNetMoD`.
        **kwargs: everything else of mmpretrain's ``MobileNetV2`` (widen_factor, out_indices,
            frozen_stages, conv_cfg, norm_cfg, act_cfg, norm_eval, with_cp, init_cfg).

    Shapes:
        x: (N, 3, H, W) -> tuple of feature maps for out_indices (7 = conv2, (N, 1280, H/32, W/32)).

    Example:
        >>> model = MobileNetV2MoD(arch='MoD').eval()
        >>> print(tuple(model(torch.rand(1, 3, 224, 224))[-1].shape))
        (1, 1280, 7, 7)
    """

    # t, c, n, s  (expand ratio, channels, blocks, stride of the first block)
    arch_zoo = {
        'MoD': [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]],
        'MoD-L': [[1, 16, 1, 1], [6, 32, 2, 2], [6, 64, 3, 2], [6, 96, 4, 2],
                  [6, 128, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]],
    }

    def __init__(self,
                 arch: Union[str, Sequence[Sequence[int]]] = 'MoD',
                 mod_c: int = 16,
                 mod_pattern: Union[str, Sequence[Sequence[int]]] = 'alternate',
                 fusion: str = 'first',
                 selection: str = 'topk',
                 selector_reduction: int = 16,
                 **kwargs):
        if isinstance(arch, str):
            if arch not in self.arch_zoo:
                raise KeyError(f'invalid arch {arch!r} for {type(self).__name__}; choose from '
                               f'{list(self.arch_zoo)} or give a [[t, c, n, s], ...] table')
            arch = self.arch_zoo[arch]
        arch = [list(row) for row in arch]
        if not arch or any(len(row) != 4 or min(row) < 1 for row in arch):
            raise ValueError(f'a custom arch must be a list of [t, c, n, s] rows of positive '
                             f'integers, got {arch!r}')
        num_selected_channels(1, mod_c)  # validates c before anything is built
        # Read by MobileNetV2.__init__ (the table) and make_layer (the masks).
        self.arch_settings = arch
        self._mod_masks = mod_block_masks([row[2] for row in arch], mod_pattern)
        self._mod_cfg = dict(mod_c=mod_c, fusion=fusion, selection=selection,
                             selector_reduction=selector_reduction)
        super().__init__(**kwargs)
        self.mod_c = mod_c
        self.mod_pattern = mod_pattern

    def make_layer(self, out_channels, num_blocks, stride, expand_ratio):
        """One table row: a standard first block, then standard or MoD blocks."""
        mask = self._mod_masks[len(self.layers)]  # MobileNetV2.__init__ appends after building
        layers = []
        for i in range(num_blocks):
            if mask[i]:
                k = num_selected_channels(out_channels, self._mod_cfg['mod_c'])
                branch = inverted_residual_branch(k, expand_ratio, self.conv_cfg, self.norm_cfg,
                                                  self.act_cfg)
                layers.append(MoDBlock(out_channels, k, branch, fusion=self._mod_cfg['fusion'],
                                       selection=self._mod_cfg['selection'],
                                       selector_reduction=self._mod_cfg['selector_reduction']))
            else:
                layers.append(InvertedResidual(
                    self.in_channels, out_channels, stride if i == 0 else 1,
                    expand_ratio=expand_ratio, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                    act_cfg=self.act_cfg, with_cp=self.with_cp))
            self.in_channels = out_channels  # upstream threads the width through this attribute
        return nn.Sequential(*layers)
