"""ResNet with gated-off filters physically removed: the static network a data-independent
:class:`~mmmod.models.backbones.GatedResNet` becomes after thresholding its gates (Herrmann et
al., pruning with data-independent gates, Sec. 1, 4.3.2), written by ``tools/export_pruned.py``.

A gated position keeps the channels whose group is on; ``channel_cfg`` lists them per block.
Only the residual branch and the projection shortcut shrink -- the residual stream between
blocks keeps its full width, so stage outputs (and every neck / head) are those of ResNet::

    x (N, C, H, W) -+-> x[:, input] -> conv1 (k_in -> k_1) -> conv2 (k_1 -> k_2)
                    |       -> conv3 (k_2 -> k_3) -> scatter k_3 into C_out --------+
                    +-> downsample (C -> k_ds) -> scatter k_ds into C_out --------> + -> relu
                    (identity shortcut: x itself, full width)

A removed conv1 / conv2 filter was multiplied by 0 after its ReLU, so dropping it and the next
conv's matching input channels changes nothing; a removed conv3 / shortcut filter added 0 to
the stream. Hence the pruned network computes what the thresholded gated one does.

The compact export of dynamic channel execution (a ``BanditResNet`` with its topology fixed)
is the same network; its stem conv may keep only some filters too (``channel_cfg["stem"]``),
which the first block's branch and projection then read as they are.
"""
from typing import Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck

from mmmod.registry import MODELS
from ..layers.channel_structure import (KEPT, forward_block, position_widths, scatter_channels,
                                        structure_of)
from ._pruned_utils import (PrunedBackboneMixin, _replace, check_block_names,
                            check_positions, load_channel_cfg, prune_block)
from .base import ResNetBase, V1cStem, resnet_arch_settings


class PrunedBlockMixin:
    """Turns an upstream BasicBlock / Bottleneck into its pruned form; put before it.

    The block is built at full width by upstream's ``__init__`` (so strides, dilations, style,
    conv / norm configs are upstream's), then each conv and norm of its channel structure is
    rebuilt with the kept channels (:func:`prune_block`); its forward walks the structure with
    :class:`~mmmod.models.layers.channel_structure.KeptChannels`.
    """

    def _prune(self, kept: Mapping[str, Sequence[int]], name: str,
               stream: Optional[Sequence[int]] = None) -> None:
        owner = (f'{type(self).__name__}, '
                 f'{"with" if self.downsample is not None else "no"} projection shortcut')
        self.channel_structure = structure_of(self)
        self._widths = position_widths(self)
        self.kept_channels = check_positions(name, owner, kept, self._widths)
        prune_block(self, self.kept_channels, self._widths,
                    None if stream is None else tuple(stream))

    def position_widths(self) -> Dict[str, int]:
        """Full width of each gated position, in forward order: the branch's inner tensors
        are ``mid_channels`` wide, the one added into the stream ``out_channels``."""
        return dict(self._widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        return forward_block(self, x, KEPT)

    def extra_repr(self) -> str:
        return ', '.join(f'{p}={len(k)}/{self._widths[p]}'
                         for p, k in self.kept_channels.items())


class PrunedBottleneck(PrunedBlockMixin, Bottleneck):
    """mmpretrain's Bottleneck keeping only ``kept`` channels at the gated positions
    ``input, conv1, conv2, conv3[, downsample]`` (GatedBottleneck's).

    Example:
        >>> kept = dict(input=[0, 2], conv1=[1], conv2=[0, 3], conv3=[0, 5, 9])
        >>> block = PrunedBottleneck(16, 16, kept=kept, name='layer1.1').eval()
        >>> block(torch.rand(1, 16, 4, 4)).shape, block.conv2.weight.shape
        (torch.Size([1, 16, 4, 4]), torch.Size([2, 1, 3, 3]))
    """

    def __init__(self, *args, kept: Mapping[str, Sequence[int]], name: str = 'block',
                 stream: Optional[Sequence[int]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._prune(kept, name, stream)


class PrunedBasicBlock(PrunedBlockMixin, BasicBlock):
    """mmpretrain's BasicBlock keeping only ``kept`` channels at the gated positions
    ``input, conv1, conv2[, downsample]`` (GatedBasicBlock's; conv2 is added to the stream).

    Example:
        >>> block = PrunedBasicBlock(8, 8, kept=dict(input=[0, 1], conv1=[2, 3, 7],
        ...                                           conv2=[0, 4]), name='b').eval()
        >>> block(torch.rand(1, 8, 4, 4)).shape, block.conv1.weight.shape
        (torch.Size([1, 8, 4, 4]), torch.Size([3, 2, 3, 3]))
    """

    def __init__(self, *args, kept: Mapping[str, Sequence[int]], name: str = 'block',
                 stream: Optional[Sequence[int]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._prune(kept, name, stream)


@MODELS.register_module()
class PrunedResNet(PrunedBackboneMixin, ResNetBase):
    """ResNet whose residual branches keep only the channels listed in ``channel_cfg``.

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        channel_cfg (str | dict): the exporter's ``<name>_channels.json`` (path) or its dict:
            ``{"blocks": {"layer1.0": {"input": [...], "conv1": [...], ...}, ...}}``, the kept
            channel indices (strictly increasing) of every gated position of every block
            (``GatedResNet``'s positions). Optional ``"depth"`` is checked against ``depth``;
            optional ``"stem"``: the kept filters of the stem's (last) conv (a
            ``BanditResNet`` export), which the first block then reads.
        contract_dilation, pretrained, **kwargs: as
            :class:`~mmmod.models.backbones.base.ResNetBase` (mmseg's dilation rule, mmseg's
            ``pretrained``, everything of mmpretrain's ``ResNet``).

    State-dict names are ResNet's; only the shapes of the branch convs / norms and the
    shortcut shrink. :meth:`state_dict_from_full` slices a full-width (gated or plain) ResNet
    state dict into this network's.

    Shapes:
        x: (N, in_channels, H, W) -> tuple of (N, C_i, H / s_i, W / s_i), C_i as ResNet's.

    Example:
        >>> from mmmod.models.backbones import GatedResNet
        >>> from mmmod.analysis.pruning import gated_channel_cfg
        >>> gated = GatedResNet(depth=18, gate_type='independent')
        >>> model = PrunedResNet(depth=18, channel_cfg=gated_channel_cfg(gated)).eval()
        >>> tuple(model(torch.rand(1, 3, 64, 64))[-1].shape)
        (1, 512, 2, 2)
    """

    arch_settings = resnet_arch_settings(dict(basic=PrunedBasicBlock,
                                              bottleneck=PrunedBottleneck))

    def __init__(self, depth: int, channel_cfg: Union[str, Mapping],
                 contract_dilation: bool = False, pretrained=None, **kwargs):
        num_stages = kwargs.get('num_stages', 4)
        _, stage_blocks = self.arch_of(depth, num_stages)
        cfg = load_channel_cfg(channel_cfg)
        if cfg.get('depth', depth) != depth:
            raise ValueError(f'channel_cfg was exported from a depth-{cfg["depth"]} network, '
                             f'but {type(self).__name__} has depth={depth}')
        check_block_names(cfg['blocks'], (self.block_name(s, b) for s, n in
                                          enumerate(stage_blocks) for b in range(n)),
                          f'a depth-{depth} ResNet with {num_stages} stages')
        self.channel_cfg = cfg
        super().__init__(depth, contract_dilation, pretrained, **kwargs)
        if 'stem' in cfg:
            self._prune_stem(cfg['stem'])
            self._freeze_stages()  # the rebuilt stem modules follow frozen_stages too

    def make_block(self, stage: int, index: int, block: type, **kwargs) -> nn.Module:
        """A pruned block keeping its ``channel_cfg`` channels (the first one reading the
        pruned stem's as they are where it projects them; an identity shortcut gets them
        back at full width, see :meth:`_prune_stem`)."""
        name = self.block_name(stage, index)
        stream = self.channel_cfg.get('stem') if (stage, index) == (0, 0) and \
            kwargs.get('downsample') is not None else None
        return block(kept=self.channel_cfg['blocks'][name], name=name, stream=stream, **kwargs)

    def _prune_stem(self, kept) -> None:
        """The stem's last conv and norm keep ``kept`` filters (a channel bandit's stem arm).
        The first block reads them as they are; where its shortcut is the identity, they are
        put back at their channels of the full-width stream after the max pool."""
        _, conv, norm, _ = self.stem_parts()
        kept = check_positions('stem', 'the stem', dict(stem=kept),
                               dict(stem=conv.out_channels))['stem']
        owner = self if not self.deep_stem else self.stem[-1]
        names = {id(m): n for n, m in self.named_modules()}
        slim = build_conv_layer(owner.conv_cfg, conv.in_channels, len(kept),
                                kernel_size=conv.kernel_size, stride=conv.stride,
                                padding=conv.padding, dilation=conv.dilation,
                                bias=conv.bias is not None)
        self.slices = {names[id(conv)]: (kept, None), names[id(norm)]: (kept, None)}
        _replace(self, names[id(conv)], slim)
        _replace(self, names[id(norm)], build_norm_layer(owner.norm_cfg, len(kept))[1])
        if self.layer1[0].channel_structure.shortcut is None and len(kept) < conv.out_channels:
            self.maxpool = nn.Sequential(self.maxpool,
                                         ScatterChannels(kept, conv.out_channels))


class ScatterChannels(nn.Module):
    """Puts k kept channels back at their indices of a C-wide tensor (zeros elsewhere):
    (N, k, H, W) -> (N, C, H, W)."""

    def __init__(self, index: Sequence[int], channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer('index', torch.tensor(index, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scatter_channels(x, self.index, self.channels)


@MODELS.register_module()
class PrunedResNetV1c(V1cStem, PrunedResNet):
    """PrunedResNet with the V1c deep stem (three 3x3 convs): the export of a GatedResNetV1c,
    the mmseg backbone."""
