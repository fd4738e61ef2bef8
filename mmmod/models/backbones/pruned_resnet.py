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
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck, ResLayer, ResNet

from mmmod.registry import MODELS
from ..layers.active_channels import CHAINS
from ._mod_utils import MoDBackboneMixin, pretrained_to_init_cfg
from ._pruned_utils import (PrunedBackboneMixin, check_block_names, check_positions,
                            index_buffer, load_channel_cfg)


class PrunedBlockMixin:
    """Turns an upstream BasicBlock / Bottleneck into its pruned form; put before it.

    The block is built at full width by upstream's ``__init__`` (so strides, dilations, style,
    conv / norm configs are upstream's), then each conv and norm is rebuilt with the kept
    channels. ``chain`` lists the branch's (conv, norm, input position, output position) in
    forward order; the last output position is the one added into the stream.
    """

    chain: Tuple[Tuple[str, str, str, str], ...] = ()

    def _prune(self, kept: Mapping[str, Sequence[int]], name: str) -> None:
        owner = (f'{type(self).__name__}, '
                 f'{"with" if self.downsample is not None else "no"} projection shortcut')
        kept = check_positions(name, owner, kept, self.position_widths())
        self.kept_channels = kept
        # sub-module -> (kept output rows, kept input columns) of its full-width tensors
        self.slices: Dict[str, Tuple[Tuple[int, ...], Optional[Tuple[int, ...]]]] = {}
        for conv_name, norm_attr, src, dst in self.chain:
            conv, norm_name = getattr(self, conv_name), getattr(self, norm_attr + '_name')
            setattr(self, conv_name, build_conv_layer(
                self.conv_cfg, len(kept[src]), len(kept[dst]), kernel_size=conv.kernel_size,
                stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                bias=conv.bias is not None))
            setattr(self, norm_name, build_norm_layer(self.norm_cfg, len(kept[dst]))[1])
            self.slices[conv_name] = (kept[dst], kept[src])
            self.slices[norm_name] = (kept[dst], None)
        if self.downsample is not None:
            # upstream's Sequential([AvgPool2d,] conv, norm): keep its indices (state-dict names)
            *pool, conv, norm = self.downsample
            k = len(kept['downsample'])
            self.downsample = nn.Sequential(*pool, build_conv_layer(
                self.conv_cfg, conv.in_channels, k, kernel_size=1, stride=conv.stride,
                bias=False), build_norm_layer(self.norm_cfg, k)[1])
            self.slices[f'downsample.{len(pool)}'] = (kept['downsample'], None)
            self.slices[f'downsample.{len(pool) + 1}'] = (kept['downsample'], None)
        # Channel indices as buffers (follow .to(device)); None = every channel kept, so the
        # gather / scatter is skipped. Not persistent: channel_cfg is their source.
        for buffer, pos, width in (('input_index', 'input', self.in_channels),
                                   ('output_index', self.chain[-1][3], self.out_channels),
                                   ('downsample_index', 'downsample', self.out_channels)):
            self.register_buffer(buffer, None if pos not in kept else
                                 index_buffer(kept[pos], width), persistent=False)

    def position_widths(self) -> Dict[str, int]:
        """Full width of each gated position, in forward order: the branch's inner tensors
        are ``mid_channels`` wide, the one added into the stream ``out_channels``."""
        widths = {'input': self.in_channels}
        for _, _, _, dst in self.chain[:-1]:
            widths[dst] = self.mid_channels
        widths[self.chain[-1][3]] = self.out_channels
        if self.downsample is not None:
            widths['downsample'] = self.out_channels
        return widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:

        def _inner_forward(x):
            out = x
            if self.input_index is not None:
                out = x.index_select(1, self.input_index)  # (N, C_in, H, W) -> (N, k_in, H, W)
            for i, (conv, norm, _, _) in enumerate(self.chain):
                out = getattr(self, norm)(getattr(self, conv)(out))
                if i < len(self.chain) - 1:
                    out = self.relu(out)
            out = self.drop_path(out)  # (N, k_out, H', W')
            identity = x if self.downsample is None else self.downsample(x)
            return self._merge(out, identity)

        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(_inner_forward, x, use_reentrant=False)
        else:
            out = _inner_forward(x)
        return self.relu(out)

    def _merge(self, out: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """Residual add at the kept channels: out (N, k_out, H, W), identity (N, C_out or k_ds,
        H, W) -> (N, C_out, H, W). Out of place on the identity: ``x`` may be a stage output."""
        out_index, ds_index = self.output_index, self.downsample_index
        if ds_index is None:  # identity is full width
            if out_index is None:
                return out + identity
            return identity.index_add(1, out_index, out)  # (N, C_out, ...) += out at out_index
        if out_index is None:  # out is ours: add the shortcut's k_ds channels into it
            return out.index_add_(1, ds_index, identity)
        n, _, h, w = out.shape
        full = out.new_zeros(n, self.out_channels, h, w)  # (N, C_out, H, W)
        full.index_copy_(1, ds_index, identity)  # shortcut's k_ds channels
        return full.index_add_(1, out_index, out)  # + branch's k_out channels

    def extra_repr(self) -> str:
        return ', '.join(f'{p}={len(k)}/{w}' for (p, k), w in zip(
            self.kept_channels.items(), self.position_widths().values()))


class PrunedBottleneck(PrunedBlockMixin, Bottleneck):
    """mmpretrain's Bottleneck keeping only ``kept`` channels at the gated positions
    ``input, conv1, conv2, conv3[, downsample]`` (GatedBottleneck's).

    Example:
        >>> kept = dict(input=[0, 2], conv1=[1], conv2=[0, 3], conv3=[0, 5, 9])
        >>> block = PrunedBottleneck(16, 16, kept=kept, name='layer1.1').eval()
        >>> block(torch.rand(1, 16, 4, 4)).shape, block.conv2.weight.shape
        (torch.Size([1, 16, 4, 4]), torch.Size([2, 1, 3, 3]))
    """

    chain = CHAINS[Bottleneck]

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

    chain = CHAINS[BasicBlock]

    def __init__(self, *args, kept: Mapping[str, Sequence[int]], name: str = 'block',
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._prune(kept, name)


@MODELS.register_module()
class PrunedResNet(PrunedBackboneMixin, MoDBackboneMixin, ResNet):
    """ResNet whose residual branches keep only the channels listed in ``channel_cfg``.

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        channel_cfg (str | dict): the exporter's ``<name>_channels.json`` (path) or its dict:
            ``{"blocks": {"layer1.0": {"input": [...], "conv1": [...], ...}, ...}}``, the kept
            channel indices (strictly increasing) of every gated position of every block
            (``GatedResNet``'s positions). Optional ``"depth"`` is checked against ``depth``.
        contract_dilation (bool): halve the dilation of a dilated stage's first block (mmseg).
        pretrained (str, optional): mmseg-style checkpoint, converted to a Pretrained init_cfg.
        **kwargs: everything else of mmpretrain's ``ResNet`` (out_indices, frozen_stages,
            norm_eval, style, deep_stem, avg_down, strides, dilations, init_cfg, ...).

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

    arch_settings = {
        18: (PrunedBasicBlock, (2, 2, 2, 2)),
        34: (PrunedBasicBlock, (3, 4, 6, 3)),
        50: (PrunedBottleneck, (3, 4, 6, 3)),
        101: (PrunedBottleneck, (3, 4, 23, 3)),
        152: (PrunedBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth: int, channel_cfg: Union[str, Mapping],
                 contract_dilation: bool = False, pretrained=None, **kwargs):
        if depth not in self.arch_settings:
            raise KeyError(f'invalid depth {depth!r} for {type(self).__name__}; choose from '
                           f'{sorted(self.arch_settings)}')
        cfg = load_channel_cfg(channel_cfg)
        if cfg.get('depth', depth) != depth:
            raise ValueError(f'channel_cfg was exported from a depth-{cfg["depth"]} network, '
                             f'but {type(self).__name__} has depth={depth}')
        self._kept = cfg['blocks']
        num_stages = kwargs.get('num_stages', 4)
        check_block_names(self._kept, (
            f'layer{s + 1}.{b}' for s, n in enumerate(self.arch_settings[depth][1][:num_stages])
            for b in range(n)), f'a depth-{depth} ResNet with {num_stages} stages')
        self.contract_dilation = contract_dilation
        if pretrained is not None:
            kwargs['init_cfg'] = pretrained_to_init_cfg(pretrained, kwargs.get('init_cfg'))
        self.input_channels = kwargs.get('in_channels', 3)
        super().__init__(depth=depth, **kwargs)
        self.channel_cfg = cfg

    def make_res_layer(self, block, num_blocks, in_channels, out_channels, expansion, stride=1,
                       dilation=1, avg_down=False, drop_path_rate=0.0, **kwargs):
        """One stage; block 0 (stride, projection shortcut) is built by upstream's ResLayer."""
        stage = len(self.res_layers)  # ResNet.__init__ appends each stage after building it
        names = [f'layer{stage + 1}.{i}' for i in range(num_blocks)]
        dpr = (list(drop_path_rate) if isinstance(drop_path_rate, (list, tuple))
               else [drop_path_rate] * num_blocks)
        first_dilation = dilation // 2 if self.contract_dilation and dilation > 1 else dilation
        blocks = [ResLayer(block, 1, in_channels, out_channels, expansion=expansion,
                           stride=stride, avg_down=avg_down, dilation=first_dilation,
                           drop_path_rate=dpr[:1], kept=self._kept[names[0]], name=names[0],
                           **kwargs)[0]]
        for i in range(1, num_blocks):
            blocks.append(block(in_channels=out_channels, out_channels=out_channels,
                                expansion=expansion, stride=1, dilation=dilation,
                                drop_path_rate=dpr[i], kept=self._kept[names[i]],
                                name=names[i], **kwargs))
        return nn.Sequential(*blocks)


@MODELS.register_module()
class PrunedResNetV1c(PrunedResNet):
    """PrunedResNet with the V1c deep stem (three 3x3 convs): the export of a GatedResNetV1c,
    the mmseg backbone."""

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=False, **kwargs)
