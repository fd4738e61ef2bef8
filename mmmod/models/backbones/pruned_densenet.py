"""DenseNet keeping only some channels: the compact network a
:class:`~mmmod.models.backbones.BanditDenseNet` exports (Spasov & Lio, Alg. 1 steps 12-14),
written by ``tools/export_pruned.py`` and fine-tuned.

Each conv keeps the filters ``channel_cfg`` lists; the stream between layers is the
concatenation of the kept channels only, so each reader (a dense layer's norm1 + conv1, a
transition's norm + conv, the final norm) keeps exactly the channels of its input that its
sources kept::

    x -> stem conv (3 -> k_s) -> bn -> relu -> maxpool
      -> dense layer: cat(kept) -> bn1 (k_in) -> relu -> conv1 (k_in -> k_1) -> bn2 (k_1)
                      -> relu -> conv2 (k_1 -> k_2) -> (cat)
      -> transition: bn (k_in) -> relu -> conv (k_in -> k_t) -> avgpool
      -> final bn (k) -> relu -> kept channels put back at their indices of the full width

A removed channel was multiplied by 0 after each of its readers' BN-ReLU in the bandit model,
so dropping it (the filter, the readers' norm channels and conv columns) changes nothing: the
compact network computes what the bandit model does in eval. The backbone output keeps the
full width (zeros at removed channels), so the neck and head are DenseNet's.
"""
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmpretrain.models.backbones.densenet import DenseLayer, DenseNet, DenseTransition

from mmmod.registry import MODELS
from ..layers.channel_structure import DENSE_LAYER, DENSE_TRANSITION, KEPT, walk
from ._pruned_utils import (PrunedBackboneMixin, check_block_names, check_positions,
                            load_channel_cfg, prune_block)
from .bandit_densenet import (STEM, dense_layers, refuse_memory_efficient,
                              replace_dense_layers, stream_layout)
from .pruned_resnet import ScatterChannels


class _PrunedDenseMixin:
    """Builds the upstream module at full width, then keeps ``kept`` (position -> kept
    indices of the full width, ``input`` included) with :func:`prune_block`."""

    def _prune(self, kept: Mapping[str, Sequence[int]], name: str, norm_cfg: dict) -> None:
        self.norm_cfg, self.conv_cfg = norm_cfg, None  # what prune_block builds with
        widths = {'input': self.channel_structure.branch[0].conv_of(self).in_channels,
                  **{s.writes: s.conv_of(self).out_channels
                     for s in self.channel_structure.branch}}
        self.kept_channels = check_positions(name, type(self).__name__, kept, widths)
        self._widths = widths
        prune_block(self, self.kept_channels, widths)

    def extra_repr(self) -> str:
        return ', '.join(f'{p}={len(k)}/{self._widths[p]}'
                         for p, k in self.kept_channels.items())


class PrunedDenseLayer(_PrunedDenseMixin, DenseLayer):
    """mmpretrain's DenseLayer keeping the ``kept`` channels of ``input`` (what it reads of
    the concatenation), ``conv1`` and ``conv2``.

    Example:
        >>> layer = PrunedDenseLayer(8, 4, 2, dict(type='BN'), dict(type='ReLU'), 0.,
        ...                          kept=dict(input=[0, 3, 5], conv1=[1, 6], conv2=[2]))
        >>> layer([torch.rand(1, 3, 4, 4)]).shape, tuple(layer.conv1.weight.shape)
        (torch.Size([1, 1, 4, 4]), (2, 3, 1, 1))
    """

    def __init__(self, *args, kept: Mapping[str, Sequence[int]], name: str = 'layer',
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.channel_structure = DENSE_LAYER
        self._prune(kept, name, args[3] if len(args) > 3 else kwargs.get('norm_cfg'))

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        """xs: kept channels of the block input and earlier outputs -> (N, k_2, H, W)."""
        out = walk(self, torch.cat(xs, 1), KEPT)
        return F.dropout(out, self.drop_rate, self.training) if self.drop_rate > 0 else out


class PrunedDenseTransition(_PrunedDenseMixin, DenseTransition):
    """mmpretrain's DenseTransition keeping the ``kept`` channels of ``input`` and ``conv``."""

    def __init__(self, *args, kept: Mapping[str, Sequence[int]], name: str = 'transition',
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.channel_structure = DENSE_TRANSITION
        self._prune(kept, name, args[2] if len(args) > 2 else kwargs.get('norm_cfg'))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, k_in, H, W) -> (N, k_t, H / 2, W / 2)."""
        return self.pool(walk(self, x, KEPT))


@MODELS.register_module()
class PrunedDenseNet(PrunedBackboneMixin, DenseNet):
    """DenseNet whose convs keep only the channels listed in ``channel_cfg``.

    Args:
        arch (str | dict): as mmpretrain's ``DenseNet``.
        channel_cfg (str | dict): the exporter's ``<name>_channels.json`` (path) or its dict:
            ``{"stem": [...], "blocks": {"stages.0.block.0": {"conv1": [...], "conv2":
            [...]}, ..., "transitions.0": {"conv": [...]}, ...}}``, the kept filter indices
            (strictly increasing) of every conv; optional ``"arch"`` (growth_rate, depths,
            init_channels) is checked against ``arch``. ``"stem"`` may be left out (all kept).
        **kwargs: as mmpretrain's ``DenseNet`` (``memory_efficient`` is refused).

    State-dict names are DenseNet's; the convs and norms shrink to the kept channels (smaller
    shapes than DenseNet's wherever channels were removed). :meth:`state_dict_from_full`
    slices a full-width (bandit or plain) DenseNet state dict into this network's.

    Shapes:
        x: (N, in_channels, H, W) -> tuple of (N, C_i, H / s_i, W / s_i), C_i as DenseNet's
        (zeros at the removed channels).

    Example:
        >>> from mmmod.models.backbones import BanditDenseNet
        >>> arch = dict(growth_rate=4, depths=[2, 2], init_channels=8)
        >>> bandit = BanditDenseNet(arch, ratio=0.5)
        >>> cfg = bandit.pruned_channel_cfg(bandit.fixed_masks('random'))
        >>> model = PrunedDenseNet(arch, channel_cfg=cfg).eval()
        >>> tuple(model(torch.rand(1, 3, 32, 32))[-1].shape)
        (1, 16, 4, 4)
        >>> model.stem[0].out_channels == len(cfg['stem'])
        True
    """

    def __init__(self, arch='121', channel_cfg: Union[str, Mapping] = None, **kwargs):
        refuse_memory_efficient(kwargs, type(self).__name__,
                                "its layers walk their channel structure, not upstream's "
                                'checkpointed bottleneck')
        if channel_cfg is None:
            raise TypeError(f'{type(self).__name__} needs channel_cfg: the <name>_channels.json '
                            f'tools/export_pruned.py wrote, or its dict')
        cfg = load_channel_cfg(channel_cfg)
        super().__init__(arch, **kwargs)
        resolved = dict(growth_rate=self.growth_rate, depths=list(self.depths),
                        init_channels=self.init_channels)
        if 'arch' in cfg and dict(cfg['arch'], depths=list(cfg['arch']['depths'])) != resolved:
            raise ValueError(f'channel_cfg was exported from a DenseNet with arch '
                             f'{cfg["arch"]}, but {type(self).__name__} has arch {resolved}')
        check_block_names(cfg['blocks'], (site for site, _ in dense_layers(self)),
                          f'a DenseNet with depths {list(self.depths)}')
        self.channel_cfg = cfg
        layout = stream_layout(self)  # of the full-width network
        kept = self._kept_channels(cfg, layout)
        norm_cfg = kwargs.get('norm_cfg', dict(type='BN'))
        replace_dense_layers(self, PrunedDenseLayer, PrunedDenseTransition, norm_cfg,
                             kwargs.get('act_cfg', dict(type='ReLU')),
                             kwargs.get('drop_rate', 0),
                             {site: dict(kept=kept[site]) for site, _ in dense_layers(self)})
        self._prune_stem_and_final(kept, norm_cfg, layout)
        self._freeze_stages()  # the rebuilt layers follow frozen_stages too

    def _kept_channels(self, cfg: Mapping, layout: Mapping[str, list]
                       ) -> Dict[str, Dict[str, Tuple[int, ...]]]:
        """site -> position -> kept indices, each reader's ``input`` the kept channels of its
        sources at their offsets of the concatenation."""
        stem = cfg.get('stem', list(range(self.init_channels)))
        kept = {STEM: check_positions(STEM, 'the stem', {STEM: stem},
                                      {STEM: self.init_channels})}
        for site, module in dense_layers(self):
            widths = {s.writes: s.conv_of(module).out_channels for s in (
                DENSE_LAYER if isinstance(module, DenseLayer) else DENSE_TRANSITION).branch}
            kept[site] = check_positions(site, type(module).__name__, cfg['blocks'][site],
                                         widths)
        for site, sources in layout.items():
            offset, channels = 0, []
            for src_site, pos, width in sources:
                channels += [offset + c for c in kept[src_site][pos]]
                offset += width
            kept.setdefault(site, {})['input'] = tuple(channels)
        return kept

    def _prune_stem_and_final(self, kept, norm_cfg: dict, layout: Mapping[str, list]) -> None:
        """The stem conv and norm keep the stem's filters; the final norm the channels it
        reads, which go back to their indices of the full width."""
        conv = self.stem[0]
        stem = list(kept[STEM][STEM])
        self.stem[0] = nn.Conv2d(conv.in_channels, len(stem), conv.kernel_size, conv.stride,
                                 conv.padding, bias=conv.bias is not None)
        self.stem[1] = build_norm_layer(norm_cfg, len(stem))[1]
        last = f'transitions.{self.num_stages - 1}'
        final = list(kept[last]['input'])
        width = sum(w for _, _, w in layout[last])  # the full width of the output
        self.transitions[-1][0] = build_norm_layer(norm_cfg, len(final))[1]
        if len(final) < width:  # the module's state-dict names stay upstream's
            self.transitions[-1].append(ScatterChannels(final, width))
        self.slices = {'stem.0': (stem, None), 'stem.1': (stem, None),
                       f'{last}.0': (final, None)}
        # intermediate stage outputs go back to the full width of their transition conv
        self.out_scatter = nn.ModuleList(
            ScatterChannels(list(kept[f'transitions.{i}']['conv']),
                            self.transitions[i]._widths['conv'])
            for i in range(self.num_stages - 1))

    def train(self, mode: bool = True):
        super().train(mode)
        return self  # upstream's DenseNet.train returns None: eval() would too

    def forward(self, x: torch.Tensor):
        x = self.stem(x)
        outs = []
        for i in range(self.num_stages):
            x = self.transitions[i](self.stages[i](x))  # slim stream; the last: full width
            if i in self.out_indices:
                outs.append(x if i == self.num_stages - 1 else self.out_scatter[i](x))
        return tuple(outs)
