"""MobileNetV2 with gated-off channels physically removed: the static export of a
data-independent :class:`~mmmod.models.backbones.GatedMobileNetV2` (Herrmann et al., pruning).

Per inverted residual, ``channel_cfg`` lists the kept channels of its gated positions
(``input`` -- absent when t = 1 --, ``expand``, ``output``)::

    x (N, C_in, H, W) -> x[:, input] -> pw (k_in -> k_exp) -> dw (k_exp)
      -> pw-linear (k_exp -> k_out) -> scatter k_out into C_out (+ x when residual, else zeros)

The expansion gate closes a channel after the depthwise conv, so the pw filter, the dw filter
and the pw-linear input of that channel all go. Residual blocks may close a position entirely
(the paper keeps no group always on there): a closed ``output`` leaves the identity; a closed
``expand`` (or ``input``) leaves the next conv with a zero input, whose BN (+ activation) output
is still computed, as in the gated block.
"""
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from mmpretrain.models.backbones.mobilenet_v2 import InvertedResidual

from mmmod.registry import MODELS
from ..layers.channel_structure import KEPT, forward_block, position_widths, structure_of
from ._pruned_utils import (PrunedBackboneMixin, check_block_names, check_positions,
                            load_channel_cfg, prune_block)
from .base import MOBILENET_V2, MobileNetV2Base


class PrunedInvertedResidual(InvertedResidual):
    """mmpretrain's InvertedResidual keeping only ``kept`` channels (GatedInvertedResidual's
    positions); its forward walks the channel structure with
    :class:`~mmmod.models.layers.channel_structure.KeptChannels`.

    Example:
        >>> block = PrunedInvertedResidual(16, 16, 1, 6, kept=dict(
        ...     input=[0, 3], expand=list(range(0, 96, 2)), output=[1, 2]), name='b').eval()
        >>> block(torch.rand(1, 16, 8, 8)).shape, block.conv[1].conv.weight.shape
        (torch.Size([1, 16, 8, 8]), torch.Size([48, 1, 3, 3]))
    """

    def __init__(self, in_channels, out_channels, stride, expand_ratio, *,
                 kept: Mapping[str, Sequence[int]], name: str = 'block', **kwargs):
        super().__init__(in_channels, out_channels, stride, expand_ratio, **kwargs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.with_expand = expand_ratio != 1
        self.channel_structure = structure_of(self)
        widths = position_widths(self)
        kept = check_positions(name, f'{type(self).__name__}, '
                               f'{"residual" if self.use_res_connect else "no residual"}',
                               kept, widths, allow_empty=self.use_res_connect)
        self.kept_channels = kept
        if kept['output']:
            prune_block(self, kept, widths)
        else:  # the branch adds nothing: the block is the identity
            self.conv, self.slices = nn.Sequential(), {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        if len(self.conv) == 0:
            return x  # output closed (residual blocks only)
        return forward_block(self, x, KEPT)


@MODELS.register_module()
class PrunedMobileNetV2(PrunedBackboneMixin, MobileNetV2Base):
    """MobileNetV2 whose inverted residuals keep only the channels listed in ``channel_cfg``.

    Args:
        channel_cfg (str | dict): the exporter's ``<name>_channels.json`` or its dict,
            ``{"blocks": {"layer1.0": {"expand": [...], "output": [...]}, "layer2.0": {"input":
            ..., "expand": ..., "output": ...}, ...}}``.
        **kwargs: as :class:`~mmmod.models.backbones.base.MobileNetV2Base` (pretrained and
            mmpretrain's ``MobileNetV2``).

    Example:
        >>> from mmmod.models.backbones import GatedMobileNetV2
        >>> from mmmod.analysis.pruning import gated_channel_cfg
        >>> gated = GatedMobileNetV2(gate_type='independent')
        >>> model = PrunedMobileNetV2(channel_cfg=gated_channel_cfg(gated)).eval()
        >>> tuple(model(torch.rand(1, 3, 64, 64))[-1].shape)
        (1, 1280, 2, 2)
    """

    def __init__(self, channel_cfg, **kwargs):
        cfg = load_channel_cfg(channel_cfg)
        check_block_names(cfg['blocks'], (self.block_name(i, b) for i, (_, _, n, _) in
                                          enumerate(MOBILENET_V2) for b in range(n)),
                          'a MobileNetV2')
        self.channel_cfg = cfg
        super().__init__(MOBILENET_V2, **kwargs)

    def make_block(self, stage: int, index: int, **kwargs) -> nn.Module:
        """A pruned inverted residual keeping its ``channel_cfg`` channels."""
        name = self.block_name(stage, index)
        return PrunedInvertedResidual(kept=self.channel_cfg['blocks'][name], name=name,
                                      **kwargs)
