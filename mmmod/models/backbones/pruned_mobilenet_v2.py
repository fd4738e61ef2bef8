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
import warnings
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import ConvModule
from mmpretrain.models.backbones.mobilenet_v2 import InvertedResidual, MobileNetV2

from mmmod.registry import MODELS
from ._mod_utils import MoDBackboneMixin
from ._pruned_utils import (PrunedBackboneMixin, check_block_names, check_positions,
                            index_buffer, load_channel_cfg)


def _rebuild(module: ConvModule, in_channels: int, out_channels: int) -> nn.Module:
    """``module`` (upstream's ConvModule) with other widths; nn.Identity when it has no output
    (a closed expansion: nothing of it is used)."""
    conv = module.conv
    if out_channels == 0:
        return nn.Identity()
    depthwise = conv.groups > 1
    with warnings.catch_warnings():
        # a closed input gives a conv without input channels: nothing to initialise
        warnings.filterwarnings('ignore', 'Initializing zero-element tensors')
        return ConvModule(in_channels, out_channels, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, groups=out_channels if depthwise else 1,
                          conv_cfg=module.conv_cfg, norm_cfg=module.norm_cfg,
                          act_cfg=module.act_cfg)


def _run(module: ConvModule, x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """``module(x)``; with no input channel (all closed) the conv gives zeros: norm and
    activation still run on them, as in the gated block. x: (N, k_in, H, W), 1x1 convs."""
    if module.conv.in_channels > 0:
        return module(x)
    out = x.new_zeros(x.shape[0], out_channels, *x.shape[2:])  # (N, k_out, H, W)
    if module.with_norm:
        out = module.norm(out)
    return module.activate(out) if module.with_activation else out


class PrunedInvertedResidual(InvertedResidual):
    """mmpretrain's InvertedResidual keeping only ``kept`` channels (GatedInvertedResidual's
    positions).

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
        hidden = self.conv[-1].conv.in_channels
        widths = dict(input=in_channels, expand=hidden, output=out_channels)
        if not self.with_expand:
            del widths['input']
        kept = check_positions(name, f'{type(self).__name__}, '
                               f'{"residual" if self.use_res_connect else "no residual"}',
                               kept, widths, allow_empty=self.use_res_connect)
        self.kept_channels = kept
        k_exp, k_out = len(kept['expand']), len(kept['output'])
        k_in = len(kept['input']) if self.with_expand else k_exp
        layers, self.slices = list(self.conv), {}
        for i, (src, dst, width) in enumerate(
                ([('input', 'expand', k_exp)] if self.with_expand else [])
                + [('expand', 'expand', k_exp), ('expand', 'output', k_out)]):
            layers[i] = _rebuild(layers[i], k_in if src == 'input' else k_exp, width)
            if isinstance(layers[i], ConvModule):
                depthwise = layers[i].conv.groups > 1
                self.slices[f'conv.{i}.conv'] = (kept[dst], None if depthwise else kept[src])
                self.slices[f'conv.{i}.bn'] = (kept[dst], None)
        if k_out == 0:
            layers, self.slices = [], {}  # the branch adds nothing: the block is the identity
        self.conv = nn.Sequential(*layers)
        # t = 1: the expansion tensor is the input, so the dw conv reads the kept 'expand'
        read = kept['input'] if self.with_expand else kept['expand']
        self.register_buffer('input_index', index_buffer(read, in_channels), persistent=False)
        self.register_buffer('output_index', index_buffer(kept['output'], out_channels),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:

        def _inner_forward(x):
            if len(self.conv) == 0:
                return x  # output closed (residual blocks only)
            out = x
            if self.input_index is not None:
                out = x.index_select(1, self.input_index)  # (N, C_in, H, W) -> (N, k_in, H, W)
            k_exp, k_out = len(self.kept_channels['expand']), len(self.kept_channels['output'])
            if self.with_expand and k_exp:
                out = _run(self.conv[0], out, k_exp)  # pw
            if k_exp:
                out = self.conv[-2](out)  # dw
            else:  # expansion closed: only the spatial size carries on
                n, _, h, w = out.shape
                s = self.stride
                out = out.new_zeros(n, 0, (h - 1) // s + 1, (w - 1) // s + 1)
            out = _run(self.conv[-1], out, k_out)  # pw-linear, (N, k_out, H', W')
            if self.use_res_connect:
                return (x + out if self.output_index is None
                        else x.index_add(1, self.output_index, out))
            if self.output_index is None:
                return out
            full = out.new_zeros(out.shape[0], self.out_channels, *out.shape[2:])
            return full.index_copy_(1, self.output_index, out)  # (N, C_out, H', W')

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(_inner_forward, x, use_reentrant=False)
        return _inner_forward(x)


@MODELS.register_module()
class PrunedMobileNetV2(PrunedBackboneMixin, MoDBackboneMixin, MobileNetV2):
    """MobileNetV2 whose inverted residuals keep only the channels listed in ``channel_cfg``.

    Args:
        channel_cfg (str | dict): the exporter's ``<name>_channels.json`` or its dict,
            ``{"blocks": {"layer1.0": {"expand": [...], "output": [...]}, "layer2.0": {"input":
            ..., "expand": ..., "output": ...}, ...}}``.
        **kwargs: mmpretrain's ``MobileNetV2`` arguments (widen_factor, out_indices,
            frozen_stages, norm_cfg, act_cfg, norm_eval, with_cp, init_cfg).

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
        self._kept = cfg['blocks']
        check_block_names(self._kept, (f'layer{i + 1}.{b}' for i, (_, _, n, _) in
                                       enumerate(self.arch_settings) for b in range(n)),
                          'a MobileNetV2')
        self.input_channels = 3
        super().__init__(**kwargs)
        self.channel_cfg = cfg

    def make_layer(self, out_channels, num_blocks, stride, expand_ratio):
        stage = len(self.layers)  # upstream appends each row after building it
        layers = []
        for i in range(num_blocks):
            name = f'layer{stage + 1}.{i}'
            layers.append(PrunedInvertedResidual(
                self.in_channels, out_channels, stride if i == 0 else 1, expand_ratio,
                kept=self._kept[name], name=name, conv_cfg=self.conv_cfg,
                norm_cfg=self.norm_cfg, act_cfg=self.act_cfg, with_cp=self.with_cp))
            self.in_channels = out_channels  # upstream threads the width through this attribute
        return nn.Sequential(*layers)
