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
from torch.nn.modules.batchnorm import _BatchNorm

from .channel_structure import ACTIVE, forward_block
from .gumbel_gate import GatedBlockMixin, iter_gated_blocks

Folded = Dict[str, Tuple[torch.Tensor, torch.Tensor]]


def _check_block(block: nn.Module) -> None:
    if not (isinstance(block, GatedBlockMixin) and hasattr(block, 'channel_structure')):
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
    """BN-folded (weight, bias) of every conv step of a gated block's channel structure (its
    branch and projection shortcut), by step name (``'conv1'``, ``'downsample'``, ``'pw'``)."""
    _check_block(block)
    return {step.name: _fold(*step.parts(block)[1:3])
            for step in block.channel_structure.steps}


def active_channel_forward(block: nn.Module, x: torch.Tensor, folded: Folded = None
                           ) -> torch.Tensor:
    """One gated BasicBlock / Bottleneck / InvertedResidual on its active channels: equal to
    ``block(x)``. The block's channel structure is walked with
    :class:`~mmmod.models.layers.channel_structure.ActiveChannels`.

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
    _check_block(block)
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
        # None = all on: skip the gathers; else (1, C) mask -> (k,) kept indices
        index[pos] = (None if bool(z_full.all()) else
                      block.channel_gates[pos].channel_mask(z_full)[0].nonzero()[:, 0])
    return forward_block(block, x, ACTIVE, (index, folded))


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
