"""Batch-1 inference of data-dependent gated blocks on their active channels only.

Masking (``ChannelGate``) computes every filter and multiplies the gated-off ones by 0, so it
saves nothing on hardware. With one image the gates of a block are known before its convs run
(they are computed from the block input, Herrmann et al. Fig. 2), so each conv can run on the
active filters only::

    z = gates(pool(x))                    # (1, groups) per position -> kept indices k_p
    out = x[:, k_in]                      # (1, C_in, H, W) -> (1, |k_in|, H, W)
    out = conv(out, W[k_out][:, k_in])    # BN folded into W and a bias, both gathered
    ...                                   # conv1 -> conv2 (-> conv3): only kept filters
    y = identity.index_add(1, k_out, out) # added into the full-width residual stream

which equals the masked block's output (a gated-off filter contributes 0 either way). BN is
folded into the convs once (eval statistics), when the path is switched on.

GatedMobileNetV2's inverted residuals run the same way (pw -> dw -> pw-linear on the kept
channels; a residual block's fully closed position gives the identity or the folded bias).
Use :func:`active_channel_inference` as a context manager around inference of a model with
GatedResNet / GatedMobileNetV2 blocks (eval mode, batch 1)::

    with active_channel_inference(model):
        out = model(img)  # (1, 3, H, W)

Any inference gate mode works (the gates are hard 0/1 in eval); the blocks' ``last_gates`` are
recorded as usual, so ``gate_stats`` stay valid.
"""
import contextlib
from typing import Dict, Iterator, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.models.backbones.mobilenet_v2 import InvertedResidual
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck
from torch.nn.modules.batchnorm import _BatchNorm

from .gumbel_gate import GatedBlockMixin, iter_gated_blocks

# block type -> its branch: (conv, norm, input position, output position), in forward order;
# the last output position is added into the residual stream (PrunedResNet's blocks use it too)
CHAINS = {
    Bottleneck: (('conv1', 'norm1', 'input', 'conv1'), ('conv2', 'norm2', 'conv1', 'conv2'),
                 ('conv3', 'norm3', 'conv2', 'conv3')),
    BasicBlock: (('conv1', 'norm1', 'input', 'conv1'), ('conv2', 'norm2', 'conv1', 'conv2')),
}

Folded = Dict[str, Tuple[torch.Tensor, torch.Tensor]]


def _chain(block: nn.Module):
    for kind, chain in CHAINS.items():
        if isinstance(block, kind) and isinstance(block, GatedBlockMixin):
            return chain
    raise TypeError(f'the active-channel path supports gated BasicBlock / Bottleneck / '
                    f'InvertedResidual blocks (GatedResNet, GatedMobileNetV2), got '
                    f'{type(block).__name__}')


def _fold(conv: nn.Conv2d, norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """conv (no bias) followed by eval BN as (weight (C_out, C_in, kh, kw), bias (C_out,))."""
    if not isinstance(norm, _BatchNorm) or not norm.track_running_stats:
        raise TypeError(f'BN folding needs BatchNorm with running statistics, got '
                        f'{type(norm).__name__}')
    if conv.groups not in (1, conv.in_channels):
        raise TypeError('the active-channel path needs dense or depthwise convs')
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (C_out,)
    weight = conv.weight * scale[:, None, None, None]  # (C_out, C_in, kh, kw)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight.detach(), bias.detach()


@torch.no_grad()
def fold_block(block: nn.Module) -> Folded:
    """BN-folded (weight, bias) of each conv of a gated block's branch and its projection
    shortcut (key ``'downsample'``); of an inverted residual: its ConvModules, by index."""
    if _is_inverted_residual(block):
        return {i: _fold(m.conv, m.norm) for i, m in enumerate(block.conv)}
    folded = {conv: _fold(getattr(block, conv), getattr(block, norm))
              for conv, norm, _, _ in _chain(block)}
    if block.downsample is not None:
        *_, conv, norm = block.downsample  # upstream's Sequential([AvgPool2d,] conv, norm)
        folded['downsample'] = _fold(conv, norm)
    return folded


def _conv(x, conv: nn.Conv2d, folded, out_index, in_index):
    """``conv`` (BN folded) computing filters ``out_index`` from input channels ``in_index``
    (None: all), on x (1, |in_index|, H, W) -> (1, |out_index|, H', W'). A depthwise conv
    keeps its filters' own channels (``in_index`` unused)."""
    weight, bias = folded
    if out_index is not None:
        weight, bias = weight.index_select(0, out_index), bias.index_select(0, out_index)
    depthwise = conv.groups > 1
    if in_index is not None and not depthwise:
        weight = weight.index_select(1, in_index)  # (k_out, C_in, ...) -> (k_out, k_in, ...)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation,
                    weight.shape[0] if depthwise else 1)


def _is_inverted_residual(block: nn.Module) -> bool:
    return isinstance(block, InvertedResidual) and isinstance(block, GatedBlockMixin)


def _out_size(conv: nn.Conv2d, hw):
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in zip(
        hw, conv.padding, conv.dilation, conv.kernel_size, conv.stride))


def _inverted_residual_forward(block, x, folded, index):
    """GatedMobileNetV2's block on its active channels; ``index`` position -> kept channel
    indices (None: all). Residual blocks may close a position completely (empty index): a
    conv with no input channel outputs its folded bias, as the masked block does."""
    layers = list(block.conv)
    pwl, dw = len(layers) - 1, len(layers) - 2
    exp_index, out_index = index['expand'], index['output']
    if out_index is not None and out_index.numel() == 0:
        return x  # output closed (residual blocks only): the block is the identity
    k_exp = block.hidden_channels if exp_index is None else exp_index.numel()
    if k_exp == 0:  # expansion closed: pw-linear sees zeros, outputs its folded bias
        bias = folded[pwl][1] if out_index is None else folded[pwl][1][out_index]
        h, w = _out_size(layers[dw].conv, x.shape[2:])
        out = bias[None, :, None, None].expand(1, -1, h, w).clone()  # (1, k_out, H', W')
    else:
        in_index = index.get('input')
        if not block.with_expand:  # t = 1: the expansion tensor is the input
            out = x if exp_index is None else x.index_select(1, exp_index)  # (1, k_exp, H, W)
        elif in_index is not None and in_index.numel() == 0:  # input closed: pw gives its bias
            bias = folded[0][1] if exp_index is None else folded[0][1][exp_index]
            out = bias[None, :, None, None].expand(1, -1, *x.shape[2:])  # (1, k_exp, H, W)
            out = layers[0].activate(out.clone())  # a real tensor: the activation is in place
        else:
            out = x if in_index is None else x.index_select(1, in_index)  # (1, k_in, H, W)
            out = layers[0].activate(_conv(out, layers[0].conv, folded[0], exp_index, in_index))
        out = layers[dw].activate(_conv(out, layers[dw].conv, folded[dw], exp_index, None))
        out = _conv(out, layers[pwl].conv, folded[pwl], out_index, exp_index)  # (1, k_out, ..)
    if block.use_res_connect:
        return x + out if out_index is None else x.index_add(1, out_index, out)
    if out_index is None:
        return out
    full = out.new_zeros(1, block.out_channels, *out.shape[2:])  # (1, C_out, H', W')
    return full.index_copy_(1, out_index, out)


def active_channel_forward(block: nn.Module, x: torch.Tensor, folded: Folded = None
                           ) -> torch.Tensor:
    """One gated BasicBlock / Bottleneck / InvertedResidual on its active channels: equal to
    ``block(x)``.

    Args:
        block: a GatedResNet / GatedMobileNetV2 block in eval mode.
        x (Tensor): (1, C_in, H, W), batch 1 (each image has its own active channels).
        folded: :func:`fold_block` of the block (computed here if not given: slow).

    Returns:
        Tensor: (1, C_out, H / stride, W / stride).

    Example:
        >>> from mmmod.models.backbones.gated_resnet import GatedBottleneck
        >>> block = GatedBottleneck(64, 64, granularity=dict(
        ...     input=16, conv1=8, conv2=8, conv3=16)).eval()
        >>> x = torch.rand(1, 64, 8, 8)
        >>> torch.allclose(active_channel_forward(block, x), block(x), atol=1e-5)
        True
    """
    chain = None if _is_inverted_residual(block) else _chain(block)
    if block.training:
        raise RuntimeError('the active-channel path is for inference: call model.eval() '
                           '(training samples gates with gradients through the masks)')
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f'the active-channel path runs one image at a time (its channels '
                         f'depend on the image): expected (1, C, H, W), got {tuple(x.shape)}')
    folded = fold_block(block) if folded is None else folded
    z = block.sample_block_gates(x)  # position -> (1, groups); records last_gates
    index = {}
    for pos, z_full in z.items():
        gate = block.gates[pos]
        # None = all on: skip the gathers
        index[pos] = (None if bool(z_full.all()) else
                      gate.channel_mask(z_full)[0].nonzero()[:, 0])  # (1, C) -> (k,)
    if chain is None:
        return _inverted_residual_forward(block, x, folded, index)
    out = x if index['input'] is None else x.index_select(1, index['input'])  # (1, k_in, H, W)
    for i, (conv, _, src, dst) in enumerate(chain):
        out = _conv(out, getattr(block, conv), folded[conv], index[dst], index[src])
        if i < len(chain) - 1:
            out = F.relu(out)  # (1, k_dst, H', W')
    out_index = index[chain[-1][3]]
    if block.downsample is None:
        identity, ds_index = x, None
    else:
        *pool, conv, _ = block.downsample
        identity = x
        for layer in pool:
            identity = layer(identity)
        ds_index = index['downsample']
        identity = _conv(identity, conv, folded['downsample'], ds_index, None)  # (1, k_ds, ..)
    # residual add at the kept channels, as PrunedResNet's blocks do
    if ds_index is None:
        out = out + identity if out_index is None else identity.index_add(1, out_index, out)
    elif out_index is None:
        out = out.index_add_(1, ds_index, identity)
    else:
        full = out.new_zeros(1, block.out_channels, *out.shape[2:])  # (1, C_out, H', W')
        full.index_copy_(1, ds_index, identity)
        out = full.index_add_(1, out_index, out)
    return F.relu(out)


@contextlib.contextmanager
def active_channel_inference(model: nn.Module) -> Iterator[nn.Module]:
    """Within the context, every gated block of ``model`` runs :func:`active_channel_forward`
    (batch 1, eval). BN is folded on entry: do not change the weights inside the context.

    Example:
        >>> from mmmod.models.backbones import GatedResNet
        >>> model = GatedResNet(depth=18).eval()
        >>> x = torch.rand(1, 3, 64, 64)
        >>> with active_channel_inference(model):
        ...     fast = model(x)[-1]
        >>> torch.allclose(fast, model(x)[-1], atol=1e-5)
        True
    """
    blocks = [block for _, block in iter_gated_blocks(model)]
    if not blocks:
        raise ValueError(f'{type(model).__name__} has no gated blocks')
    folded = [fold_block(block) for block in blocks]  # checks every block first
    try:
        for block, fold in zip(blocks, folded):
            # an instance attribute shadows the class's forward; nn.Module.__call__ calls it
            block.forward = (lambda x, block=block, fold=fold:
                             active_channel_forward(block, x, fold))
        yield model
    finally:
        for block in blocks:
            block.__dict__.pop('forward', None)
