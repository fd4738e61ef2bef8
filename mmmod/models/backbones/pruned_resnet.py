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
"""
from typing import Dict, Mapping, Sequence, Union

import torch
import torch.nn as nn
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck

from mmmod.registry import MODELS
from ..layers.channel_structure import KEPT, forward_block, position_widths, structure_of
from ._pruned_utils import (PrunedBackboneMixin, check_block_names, check_positions,
                            load_channel_cfg, prune_block)
from .base import ResNetBase, V1cStem, resnet_arch_settings


class PrunedBlockMixin:
    """Turns an upstream BasicBlock / Bottleneck into its pruned form; put before it.

    The block is built at full width by upstream's ``__init__`` (so strides, dilations, style,
    conv / norm configs are upstream's), then each conv and norm of its channel structure is
    rebuilt with the kept channels (:func:`prune_block`); its forward walks the structure with
    :class:`~mmmod.models.layers.channel_structure.KeptChannels`.
    """

    def _prune(self, kept: Mapping[str, Sequence[int]], name: str) -> None:
        owner = (f'{type(self).__name__}, '
                 f'{"with" if self.downsample is not None else "no"} projection shortcut')
        self.channel_structure = structure_of(self)
        self._widths = position_widths(self)
        self.kept_channels = check_positions(name, owner, kept, self._widths)
        prune_block(self, self.kept_channels, self._widths)

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
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._prune(kept, name)


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
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._prune(kept, name)


@MODELS.register_module()
class PrunedResNet(PrunedBackboneMixin, ResNetBase):
    """ResNet whose residual branches keep only the channels listed in ``channel_cfg``.

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        channel_cfg (str | dict): the exporter's ``<name>_channels.json`` (path) or its dict:
            ``{"blocks": {"layer1.0": {"input": [...], "conv1": [...], ...}, ...}}``, the kept
            channel indices (strictly increasing) of every gated position of every block
            (``GatedResNet``'s positions). Optional ``"depth"`` is checked against ``depth``.
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

    def make_block(self, stage: int, index: int, block: type, **kwargs) -> nn.Module:
        """A pruned block keeping its ``channel_cfg`` channels."""
        name = self.block_name(stage, index)
        return block(kept=self.channel_cfg['blocks'][name], name=name, **kwargs)


@MODELS.register_module()
class PrunedResNetV1c(V1cStem, PrunedResNet):
    """PrunedResNet with the V1c deep stem (three 3x3 convs): the export of a GatedResNetV1c,
    the mmseg backbone."""
