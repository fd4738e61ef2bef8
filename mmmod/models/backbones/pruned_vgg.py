"""VGG with removed filters physically gone: the compact network a dynamic-channel-execution
run (:class:`~mmmod.models.backbones.BanditVGG`, Spasov & Lio Alg. 1 steps 12-14) becomes once
its topology is fixed, written by ``tools/export_pruned.py``; and what the VGG hosts share.

VGG is a plain chain: each ConvModule of ``features`` (conv 3x3 -> BN -> ReLU, max pools
between the stages) reads exactly what the previous one wrote, so nothing ties a width and a
layer keeping ``k_l`` of its filters reads the ``k_{l-1}`` the previous one kept. The kept sets
go from layer to layer slim (the ``VGG_LAYER`` description, ``slim_stream``); only where the
backbone returns features are they put back at their channels of VGG's width::

    x (N, 3, H, W) -> conv (3 -> k_1) -> ... -> pool -> ... -> conv (k_15 -> k_16) -> pool
                   -> scatter k_16 into 512 (zeros elsewhere) -> (N, 512, H / 32, W / 32)

Conv biases: mmpretrain's ``VGG`` builds its convs with ``bias=True`` even before BN, where
the norm's mean subtraction cancels them (mmcv warns "Unnecessary conv bias"). The paper's
VGG-19 has none (20.035 M parameters with the CIFAR-10 head, 20,040,522 with them), so the
configs pass ``conv_cfg=dict(type='BiasFreeConv2d')``: the same layer, state-dict names
upstream's (no ``.bias`` entries).
"""
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmpretrain.models.backbones.vgg import VGG

from mmmod.registry import MODELS
from ..layers.channel_structure import (KEPT, VGG_LAYER, forward_block, position_widths,
                                        scatter_channels)
from ._pruned_utils import (PrunedBackboneMixin, check_block_names, check_positions,
                            load_channel_cfg, prune_block)


@MODELS.register_module()
class BiasFreeConv2d(nn.Conv2d):
    """``nn.Conv2d`` without a bias whatever ``bias`` its builder passes (upstream's VGG asks
    for one before BN, which cancels it). A conv type for ``conv_cfg``."""

    def __init__(self, *args, bias: bool = False, **kwargs):
        super().__init__(*args, bias=False, **kwargs)


def chain_layer_args(layer: ConvModule) -> dict:
    """The arguments that rebuild an upstream VGG ``ConvModule`` as another ConvModule class
    (what ``make_vgg_layer`` gave it)."""
    conv = layer.conv
    return dict(in_channels=conv.in_channels, out_channels=conv.out_channels,
                kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, bias=conv.bias is not None, conv_cfg=layer.conv_cfg,
                norm_cfg=layer.norm_cfg, act_cfg=layer.act_cfg)


class VGGChainMixin:
    """What BanditVGG and PrunedVGG add to mmpretrain's ``VGG``: its ConvModules rebuilt as
    layers that walk ``VGG_LAYER``, and the forward that hands slim sets from layer to layer
    and returns VGG's full-width features. Put it before ``VGG``."""

    def _check_chain_args(self) -> None:
        if self.num_classes > 0:
            raise ValueError(f'{type(self).__name__} takes num_classes=-1: its channels feed a '
                             'head (GlobalAveragePooling + LinearClsHead), not VGG\'s '
                             '4096-wide classifier, whose FC layers are no channel positions')

    def chain_layers(self) -> Iterator[Tuple[str, ConvModule]]:
        """(state-dict prefix ``'features.<j>'``, ConvModule) of every conv layer, in order."""
        for j, layer in enumerate(getattr(self, self.module_name)):
            if isinstance(layer, ConvModule):
                yield f'{self.module_name}.{j}', layer

    def _rebuild_layers(self, make: Callable[[str, ConvModule], ConvModule]) -> None:
        """Each conv layer replaced by ``make(name, upstream layer)``, in the same slot."""
        features = getattr(self, self.module_name)
        for name, layer in list(self.chain_layers()):
            if layer.norm_cfg is None or layer.order != ('conv', 'norm', 'act'):
                raise ValueError(f'{type(self).__name__} needs conv -> norm -> act layers '
                                 "(norm_cfg=dict(type='BN'), the paper's VGG-19 with BN); "
                                 f'{name} has norm_cfg={layer.norm_cfg}, order={layer.order}')
            features[int(name.rsplit('.', 1)[1])] = make(name, layer)

    def train(self, mode: bool = True):
        super().train(mode)  # upstream VGG's train() returns None; nn.Module's returns self
        return self

    def handed_on(self, layer: ConvModule) -> Tuple[Optional[torch.Tensor], int]:
        """(indices (k,) of the channels ``layer``'s output holds or None for all of them, the
        full width of that output)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """x (N, 3, H, W) -> tuple of (N, C_i, H / 2^(i+1), W / 2^(i+1)) for i in out_indices,
        C_i VGG's (64, 128, 256, 512, 512): the channels a layer did not keep are 0."""
        features = getattr(self, self.module_name)
        outs, index, width = [], None, None  # index: the channels x holds (None: all)
        for i in range(len(self.stage_blocks)):
            for j in range(*self.range_sub_modules[i]):
                layer = features[j]
                x = layer(x)  # (N, k_{j-1}, H, W) -> (N, k_j, H, W) for a conv layer
                if isinstance(layer, ConvModule):
                    index, width = self.handed_on(layer)
            if i in self.out_indices:
                if index is None:
                    outs.append(x)
                else:  # (N, k, h, w) -> (N, C, h, w), zeros at the others
                    outs.append(scatter_channels(x, index, width))
        return tuple(outs)


class PrunedVGGLayer(ConvModule):
    """mmpretrain's VGG ConvModule keeping the ``kept`` channels of its ``input`` (the previous
    layer's kept filters) and ``output`` positions: conv and norm rebuilt slim
    (:func:`prune_block`), the forward a :class:`KeptChannels` walk of ``VGG_LAYER``.

    Example:
        >>> layer = PrunedVGGLayer(4, 8, 3, padding=1, norm_cfg=dict(type='BN'),
        ...                        kept=dict(input=[0, 2], output=[1, 5, 6])).eval()
        >>> layer(torch.rand(1, 2, 4, 4)).shape, layer.conv.weight.shape
        (torch.Size([1, 3, 4, 4]), torch.Size([3, 2, 3, 3]))
    """

    with_cp = False  # what forward_block asks; VGG layers are never checkpointed

    def __init__(self, *args, kept: Mapping[str, Sequence[int]], name: str = 'layer',
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.channel_structure = VGG_LAYER
        self._widths = position_widths(self)
        self.kept_channels = check_positions(name, 'a VGG layer', kept, self._widths)
        prune_block(self, self.kept_channels, self._widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, k_in, H, W) -> (N, k_out, H, W)."""
        return forward_block(self, x, KEPT)

    def extra_repr(self) -> str:
        return ', '.join(f'{p}={len(k)}/{self._widths[p]}'
                         for p, k in self.kept_channels.items())


@MODELS.register_module()
class PrunedVGG(VGGChainMixin, PrunedBackboneMixin, VGG):
    """mmpretrain's VGG whose conv layers keep only the channels listed in ``channel_cfg``.

    Args:
        depth (int): 11, 13, 16 or 19.
        channel_cfg (str | dict): the exporter's ``<name>_channels.json`` (path) or its dict:
            ``{"blocks": {"features.0": {"input": [0, 1, 2], "output": [...]},
            "features.1": {"input": <features.0's output>, ...}, ...}}``, the kept channel
            indices (strictly increasing) of every conv layer (``BanditVGG``'s
            ``pruned_channel_cfg``). A layer's input is what the previous layer keeps; the first
            one reads the whole image. Optional ``"depth"`` is checked against ``depth``.
        **kwargs: everything of mmpretrain's ``VGG`` (``num_classes`` must be -1; conv ->
            norm -> act layers, ``norm_cfg`` given).

    The head reads VGG's widths: the last features are put back at their channels of 512
    (zeros at the removed ones) instead of the head's FC columns being sliced. The scatter of
    an (N, k, 1, 1) map costs nothing, the fine-tune config keeps the baseline's head
    (``in_channels=512``, no number known only after the export) and the exported checkpoint
    loads into it strictly; the price is ``(512 - k) * num_classes`` head weights that only
    ever see zeros (counted in the compact network's parameters: at most 5,110 of CIFAR-10's
    head, 51,100 of CIFAR-100's).

    State-dict names are VGG's; only the shapes of the convs and norms shrink.
    :meth:`state_dict_from_full` slices a full-width (``BanditVGG`` or plain) VGG state dict
    into this network's.

    Shapes:
        x: (N, 3, H, W) -> tuple of (N, C_i, H / 2^(i+1), W / 2^(i+1)), C_i as VGG's.

    Example:
        >>> from mmmod.models.backbones import BanditVGG
        >>> bandit = BanditVGG(depth=11, ratio=0.5, norm_cfg=dict(type='BN'))
        >>> cfg = bandit.pruned_channel_cfg(bandit.fixed_masks('random'))
        >>> model = PrunedVGG(depth=11, channel_cfg=cfg, norm_cfg=dict(type='BN')).eval()
        >>> tuple(model(torch.rand(1, 3, 32, 32))[-1].shape)
        (1, 512, 1, 1)
        >>> sum(p.numel() for p in model.parameters()) < 0.4 * sum(
        ...     p.numel() for n, p in bandit.named_parameters())
        True
    """

    def __init__(self, depth: int, channel_cfg: Union[str, Mapping], **kwargs):
        cfg = load_channel_cfg(channel_cfg)
        if cfg.get('depth', depth) != depth:
            raise ValueError(f'channel_cfg was exported from a depth-{cfg["depth"]} network, '
                             f'but {type(self).__name__} has depth={depth}')
        super().__init__(depth, **kwargs)
        self._check_chain_args()
        self.depth = depth
        self.channel_cfg = cfg
        check_block_names(cfg['blocks'], (name for name, _ in self.chain_layers()),
                          f'a depth-{depth} VGG with {len(self.stage_blocks)} stages '
                          f'({sum(self.stage_blocks)} conv layers)')
        handed: Dict[str, Tuple[int, ...]] = {}  # what the previous layer keeps

        def make(name: str, layer: ConvModule) -> ConvModule:
            widths = position_widths(layer, VGG_LAYER)
            kept = check_positions(name, 'a VGG layer', cfg['blocks'][name], widths)
            expected = handed.get('previous', tuple(range(widths['input'])))
            if kept['input'] != expected:
                reads = f"{handed['name']}'s kept output" if handed else 'the whole image'
                raise ValueError(
                    f"channel_cfg layer {name!r} position 'input' must be {reads} (a VGG layer "
                    f'reads what the previous one keeps): expected {list(expected)[:8]}'
                    f'{"..." if len(expected) > 8 else ""}, got {list(kept["input"])[:8]}'
                    f'{"..." if len(kept["input"]) > 8 else ""}')
            handed.update(previous=kept['output'], name=name)
            return PrunedVGGLayer(**chain_layer_args(layer), kept=kept, name=name)

        self._rebuild_layers(make)

    def handed_on(self, layer):
        return layer.index_output, layer._widths['output']
