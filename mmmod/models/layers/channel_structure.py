"""One description of each block's channel positions, and the one walk over it.

A residual block is a chain of convs on a *branch* plus a shortcut. Every tensor of the branch
holds one channel *set*, named after the position where that set can be kept or dropped; each
conv reads one set and writes one. :class:`BlockStructure` writes this down as data, once per
upstream block (mmpretrain's ``BasicBlock``, ``Bottleneck`` and MobileNetV2's
``InvertedResidual``)::

    Bottleneck                                      [set]: a position
    x (N, C_in, H, W) -+-> [input] conv1 1x1 -> norm1 -> relu -> [conv1]    (N, C_mid, H, W)
                       |   conv2 3x3 -> norm2 -> relu -> [conv2]            (N, C_mid, H', W')
                       |   conv3 1x1 -> norm3 -> [conv3] -> drop_path --+   (N, C_out, H', W')
                       +-> downsample [pool,] 1x1, norm -> [downsample] --> + -> relu
                           (identity when the block has no projection)

    BasicBlock: the same with conv1 3x3 (input -> conv1) and conv2 3x3 (conv1 -> conv2, added).

    InvertedResidual
    x (N, C_in, H, W) -+-> [input] pw 1x1 -> bn -> relu6                    (N, C_exp, H, W)
                       |   dw 3x3 -> bn -> relu6 -> [expand]                (N, C_exp, H', W')
                       |   pwl 1x1 -> bn -> [output] ---------------------+ (N, C_out, H', W')
                       +-------------------- (residual blocks only) ----> +
    (t = 1: no pw, no input position; the branch reads x as its expand set)

    VGG layer (a ConvModule of mmpretrain's VGG.features: a plain chain, no add)
    x (N, C_in, H, W) --> [input] conv 3x3 -> norm -> relu -> [output]       (N, C_out, H, W)
    ([input] is the previous layer's [output], carried as it arrives: slim_stream)

``pw`` and ``dw`` both write the ``expand`` set: its position is decided after ``dw`` (a zero
there is what the physically smaller block computes; BN + ReLU6 of a zero is not zero), which
:attr:`ConvStep.marks` records.

One function, :func:`walk`, runs a block through its description; what happens at the
positions is a :class:`Part` plugged into the walk, so no user re-types the chain:

=========================  ================================================================
part                       user
=========================  ================================================================
:class:`Part` (nothing)    PiX's bottleneck (its conv1 step replaced by PiX), upstream order
:class:`Masks`             gated forward (0/1 or soft gate masks per position)
:class:`KeptChannels`      pruned forward (``PrunedResNet``, ``PrunedMobileNetV2``): slim
                           modules, kept channels gathered from / added into the full stream
:class:`ActiveChannels`    active-channel inference (batch 1, BN-folded weights gathered at
                           the positions' active channels per image)
:class:`ConvMacs`          gated FLOPs count (the walk carries ``(MACs, (H, W))``)
=========================  ================================================================

The next method plugs in the same way: a channel bandit's 0/1 mask per position is a
:class:`Masks`-like part, its thin execution a :class:`KeptChannels`-like part that gathers
the full weights (:func:`gathered_conv`) at each step, and its compact export is the pruned
export (:func:`position_widths`, the pruned blocks' slicing) over the same positions.
:attr:`BlockStructure.added` names the positions whose width a residual add ties.

Upstream's state-dict names are untouched: the description only names where the modules sit.
"""
import dataclasses
import operator
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp


def _getter(path: Optional[str]) -> Optional[Callable]:
    # operator.attrgetter resolves dotted paths ('conv.0.conv') in C: the hot path stays cheap
    return None if path is None else operator.attrgetter(path)


@dataclasses.dataclass(frozen=True)
class ConvStep:
    """One conv of a block's description (data: paths, not modules).

    Args:
        name (str): the step's name (``'conv1'``, ``'pw'``, ``'downsample'``), the key of
            per-step data such as folded weights.
        reads (str | None): the channel set it reads; None: the block input at full width
            (the residual stream, read by the shortcut).
        writes (str): the channel set it writes.
        conv, norm, act (str | None): paths in the block of the conv, the norm after it and the
            activation after that (None: no activation).
        unit (str | None): path of a module computing the whole step in one call (an mmcv
            ``ConvModule``, upstream's ``downsample`` ``Sequential([pool,] conv, norm)``, a
            replacing part such as PiX); None: the walk calls conv, norm, act.
        marks (bool): the position ``writes`` is decided after this step (the gate multiplies
            here). Default True.
        pre_act (bool): pre-activation order, norm -> act -> conv (DenseNet): ``norm`` and
            ``act`` run on the set it ``reads``, which is decided after them (before the conv);
            a zero before the norm would not remove a channel (BN maps 0 to its beta). Its own
            output is decided at its consumers, so such a step has ``marks=False``.
    """

    name: str
    reads: Optional[str]
    writes: str
    conv: Optional[str] = None
    norm: Optional[str] = None
    act: Optional[str] = None
    unit: Optional[str] = None
    marks: bool = True
    pre_act: bool = False
    conv_of: Callable = dataclasses.field(init=False, repr=False, compare=False)
    norm_of: Callable = dataclasses.field(init=False, repr=False, compare=False)
    act_of: Callable = dataclasses.field(init=False, repr=False, compare=False)
    unit_of: Callable = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        for field in ('conv', 'norm', 'act', 'unit'):
            object.__setattr__(self, field + '_of', _getter(getattr(self, field)))
        if self.pre_act and (self.marks or self.unit is not None or self.reads is None):
            raise ValueError(f'pre-activation step {self.name!r}: its output is decided at its '
                             f'consumers (marks=False), it reads a position, and its norm and '
                             f'act are called on their own (no unit)')

    def parts(self, block: nn.Module):
        """``(pre, conv, norm, act)`` modules of this step in ``block``: ``pre`` the layers
        before the conv (a shortcut's average pool), ``act`` None when there is none."""
        if self.conv is not None:
            try:
                act = None if self.act is None else self.act_of(block)
            except AttributeError:  # a ConvModule built with act_cfg=None has no activate
                act = None
            return (), self.conv_of(block), self.norm_of(block), act
        unit = self.unit_of(block)
        if isinstance(unit, nn.Conv2d):  # a bare conv given as the shortcut
            return (), unit, None, None
        *pre, conv, norm = unit  # upstream's Sequential([pool,] conv, norm)
        return tuple(pre), conv, norm, None


@dataclasses.dataclass(frozen=True)
class BlockStructure:
    """The channel positions of one block kind, in forward order (see the module docstring).

    Args:
        kind (str): the upstream block it describes.
        positions (tuple[str]): every position where a channel set can be kept or dropped.
        entry (str | None): the position at the branch input (multiplied into x before the
            first step reads it); None: the branch reads x as it is.
        branch (tuple[ConvStep]): the residual branch; the last step's set is added.
        shortcut (ConvStep | None): the projection shortcut (None: the identity).
        residual (bool): the branch is added to the shortcut (False: the block is its branch).
        drop_path (str | None): path of the drop path applied to the branch before the add.
        post_act (str | None): path of the activation after the add.
        slim_stream (bool): the block reads and writes the stream as a part carries it, at the
            kept / active channels only (a dense layer's concatenation, a VGG layer's chain):
            nothing is gathered at the entry nor scattered into a full-width output. Default
            False.
    """

    kind: str
    positions: Tuple[str, ...]
    entry: Optional[str]
    branch: Tuple[ConvStep, ...]
    shortcut: Optional[ConvStep] = None
    residual: bool = True
    drop_path: Optional[str] = None
    post_act: Optional[str] = None
    slim_stream: bool = False
    drop_path_of: Callable = dataclasses.field(init=False, repr=False, compare=False)
    post_act_of: Callable = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, 'drop_path_of', _getter(self.drop_path))
        object.__setattr__(self, 'post_act_of', _getter(self.post_act))

    @property
    def out(self) -> str:
        """The set the branch adds into the stream."""
        return self.branch[-1].writes

    @property
    def steps(self) -> Tuple[ConvStep, ...]:
        """Branch steps, then the shortcut's."""
        return self.branch + (() if self.shortcut is None else (self.shortcut,))

    @property
    def added(self) -> Tuple[str, ...]:
        """Positions whose width the residual add ties to the stream's."""
        if not self.residual:
            return ()
        return (self.out,) + (() if self.shortcut is None else (self.shortcut.writes,))

    def without_shortcut(self) -> 'BlockStructure':
        """The same block with the identity shortcut (no projection position)."""
        pos = self.shortcut.writes
        return dataclasses.replace(self, shortcut=None,
                                   positions=tuple(p for p in self.positions if p != pos))

    def replace_step(self, name: str, **changes) -> 'BlockStructure':
        """The same block with one step's fields replaced, e.g. its conv by another part:
        ``BOTTLENECK.replace_step('conv1', unit='squeeze', conv=None, norm=None, act=None)``."""
        if name not in [s.name for s in self.branch]:
            raise KeyError(f'{self.kind} has no step {name!r}; steps: '
                           f'{[s.name for s in self.branch]}')
        return dataclasses.replace(self, branch=tuple(
            dataclasses.replace(s, **changes) if s.name == name else s for s in self.branch))


# The descriptions of the upstream blocks (mmpretrain). Norms by their properties (norm1, ...):
# their registered names (bn1, gn1, ...) depend on norm_cfg.
DOWNSAMPLE = ConvStep('downsample', reads=None, writes='downsample', unit='downsample')

BOTTLENECK = BlockStructure(
    kind='Bottleneck', positions=('input', 'conv1', 'conv2', 'conv3', 'downsample'),
    entry='input', branch=(
        ConvStep('conv1', 'input', 'conv1', 'conv1', 'norm1', 'relu'),  # 1x1 squeeze
        ConvStep('conv2', 'conv1', 'conv2', 'conv2', 'norm2', 'relu'),  # 3x3 (stride)
        ConvStep('conv3', 'conv2', 'conv3', 'conv3', 'norm3'),  # 1x1 expand, added
    ), shortcut=DOWNSAMPLE, drop_path='drop_path', post_act='relu')

BASIC_BLOCK = BlockStructure(
    kind='BasicBlock', positions=('input', 'conv1', 'conv2', 'downsample'),
    entry='input', branch=(
        ConvStep('conv1', 'input', 'conv1', 'conv1', 'norm1', 'relu'),  # 3x3 (stride)
        ConvStep('conv2', 'conv1', 'conv2', 'conv2', 'norm2'),  # 3x3, added
    ), shortcut=DOWNSAMPLE, drop_path='drop_path', post_act='relu')

# ConvModules: conv, its norm property, its activation (absent when act_cfg is None)
INVERTED_RESIDUAL = BlockStructure(
    kind='InvertedResidual', positions=('input', 'expand', 'output'), entry='input', branch=(
        ConvStep('pw', 'input', 'expand', 'conv.0.conv', 'conv.0.norm', 'conv.0.activate',
                 unit='conv.0', marks=False),  # pw: decided after dw
        ConvStep('dw', 'expand', 'expand', 'conv.1.conv', 'conv.1.norm', 'conv.1.activate',
                 unit='conv.1'),  # dw
        ConvStep('pwl', 'expand', 'output', 'conv.2.conv', 'conv.2.norm', unit='conv.2'),
    ))  # pw-linear
# t = 1: no expansion conv; the expand set is the input itself (no input position)
INVERTED_RESIDUAL_T1 = BlockStructure(
    kind='InvertedResidual', positions=('expand', 'output'), entry=None, branch=(
        ConvStep('dw', 'expand', 'expand', 'conv.0.conv', 'conv.0.norm', 'conv.0.activate',
                 unit='conv.0'),  # dw
        ConvStep('pwl', 'expand', 'output', 'conv.1.conv', 'conv.1.norm', unit='conv.1'),
    ))  # pw-linear
# VGG: one ConvModule of ``VGG.features`` (conv, its norm property, activate; max pools sit
# between the stages). No add ties a width and each layer reads exactly what the previous one
# wrote, so thin and pruned layers hand their kept sets on slim (``slim_stream``): no gather
# from / scatter into the full 512 channels per layer; the network restores the full width
# where it returns features.
VGG_LAYER = BlockStructure(
    kind='ConvModule', positions=('input', 'output'), entry=None, branch=(
        ConvStep('conv', 'input', 'output', 'conv', 'norm', 'activate'),  # 3x3
    ), residual=False, slim_stream=True)

_VARIANTS: Dict[tuple, BlockStructure] = {}


def structure_of(block: nn.Module) -> BlockStructure:
    """The description of an upstream block instance (its projection, expansion and residual
    connection chosen from its attributes); shared, immutable data.

    Example:
        >>> from mmpretrain.models.backbones.resnet import Bottleneck
        >>> s = structure_of(Bottleneck(64, 64))
        >>> s.positions, s.added
        (('input', 'conv1', 'conv2', 'conv3'), ('conv3',))
        >>> [(step.name, step.reads, step.writes) for step in s.branch]
        [('conv1', 'input', 'conv1'), ('conv2', 'conv1', 'conv2'), ('conv3', 'conv2', 'conv3')]
    """
    from mmpretrain.models.backbones.mobilenet_v2 import InvertedResidual
    from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck
    if isinstance(block, (Bottleneck, BasicBlock)):
        base = BOTTLENECK if isinstance(block, Bottleneck) else BASIC_BLOCK
        key = (base.kind, block.downsample is not None)
        if key not in _VARIANTS:
            _VARIANTS[key] = base if key[1] else base.without_shortcut()
    elif isinstance(block, InvertedResidual):
        with_expand = getattr(block, 'with_expand', len(block.conv) == 3)  # upstream: no flag
        key = ('InvertedResidual', with_expand, block.use_res_connect)
        if key not in _VARIANTS:
            base = INVERTED_RESIDUAL if with_expand else INVERTED_RESIDUAL_T1
            _VARIANTS[key] = dataclasses.replace(base, residual=block.use_res_connect)
    else:
        raise TypeError(f'no channel structure for {type(block).__name__}: described are '
                        f'BasicBlock, Bottleneck and InvertedResidual (mmpretrain)')
    return _VARIANTS[key]


def position_widths(block: nn.Module, structure: Optional[BlockStructure] = None
                    ) -> Dict[str, int]:
    """Full width of every position of a (full-width) block, in forward order.

    Example:
        >>> from mmpretrain.models.backbones.resnet import BasicBlock
        >>> block = BasicBlock(16, 32, downsample=nn.Conv2d(16, 32, 1))
        >>> position_widths(block, structure_of(block))
        {'input': 16, 'conv1': 32, 'conv2': 32, 'downsample': 32}
    """
    s = block.channel_structure if structure is None else structure
    widths = {}
    for step in s.steps:
        conv = step.parts(block)[1]
        if step.reads is not None:
            widths.setdefault(step.reads, conv.in_channels)
        widths[step.writes] = conv.out_channels
    return {p: widths[p] for p in s.positions}


def conv_out_size(conv: nn.Conv2d, hw) -> Tuple[int, int]:
    """(H_out, W_out) of ``conv`` on an (H, W) input."""
    return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in zip(
        hw, conv.padding, conv.dilation, conv.kernel_size, conv.stride))


def conv_macs(conv: nn.Conv2d, hw: Tuple[int, int], in_active, out_active):
    """MACs of ``conv`` computing ``out_active`` of its filters from ``in_active`` input
    channels, on an (H, W) input; returns ``(macs, (H_out, W_out))``. Depthwise convs
    (``groups == in_channels``) pass ``in_active = 1``."""
    h_out, w_out = conv_out_size(conv, hw)
    k_area = conv.kernel_size[0] * conv.kernel_size[1]
    return h_out * w_out * k_area * in_active * out_active, (h_out, w_out)


def scatter_channels(x: torch.Tensor, index: torch.Tensor, channels: int) -> torch.Tensor:
    """x (N, k, H, W), the channels ``index`` (k,) of a ``channels``-wide tensor, put back at
    their places -> (N, channels, H, W), zeros elsewhere (what a removed channel holds)."""
    full = x.new_zeros(x.shape[0], channels, *x.shape[2:])
    return full.index_copy(1, index, x)


def gathered_conv(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor,
                  bias: Optional[torch.Tensor], out_index: Optional[torch.Tensor],
                  in_index: Optional[torch.Tensor]) -> torch.Tensor:
    """``conv``'s geometry with the filters ``out_index`` of ``weight`` (C_out, C_in, kh, kw)
    reading the input channels ``in_index`` (None: all), on x (N, |in_index|, H, W) ->
    (N, |out_index|, H', W'). A depthwise conv keeps its filters' own channels."""
    if out_index is not None:
        weight = weight.index_select(0, out_index)  # (C_out, ...) -> (k_out, ...)
        bias = None if bias is None else bias.index_select(0, out_index)
    depthwise = conv.groups > 1
    if in_index is not None and not depthwise:
        weight = weight.index_select(1, in_index)  # (k_out, C_in, ...) -> (k_out, k_in, ...)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation,
                    weight.shape[0] if depthwise else 1)


def slim_branch(reference: nn.Module, widths: Dict[str, int], conv_cfg=None,
                norm_cfg=dict(type='BN')) -> nn.Sequential:
    """The residual branch of a described block rebuilt at other widths, as mmcv ConvModules:
    one per branch step, in order, each with the reference step's kernel, padding, dilation,
    depthwise grouping and activation, stride 1 (a CNN-MoD block's slim branch: the block's
    branch at width k, ending in its last norm).

    Args:
        reference (nn.Module): an upstream block of the kind (its geometry is read, not its
            weights: build it on the meta device).
        widths (dict): position -> width of every set the branch reads or writes.

    Shapes:
        (N, widths[first read], H, W) -> (N, widths[last written], H, W)

    Example:
        >>> from mmpretrain.models.backbones.resnet import Bottleneck
        >>> with torch.device('meta'):
        ...     reference = Bottleneck(4, 4)
        >>> branch = slim_branch(reference, dict(input=16, conv1=4, conv2=4, conv3=16))
        >>> [(m.conv.in_channels, m.conv.out_channels, m.conv.kernel_size[0], m.with_activation)
        ...  for m in branch]
        [(16, 4, 1, True), (4, 4, 3, True), (4, 16, 1, False)]
    """
    from mmcv.cnn import ConvModule
    layers = []
    for step in structure_of(reference).branch:
        _, conv, _, act = step.parts(reference)
        c_in, c_out = widths[step.reads], widths[step.writes]
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels
        layers.append(ConvModule(
            c_in, c_out, conv.kernel_size, padding=conv.padding, dilation=conv.dilation,
            groups=c_out if depthwise else 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
            act_cfg=None if act is None else dict(type=type(act).__name__)))
    return nn.Sequential(*layers)


class Part:
    """What happens at the positions of a :func:`walk`; this base: nothing, so the walk is
    upstream's forward. ``state`` is the part's per-call data (gates, indices, counts)."""

    def enter(self, block, s: BlockStructure, x, state):
        """The branch input from the block input x (N, C_in, H, W)."""
        return x

    def pre(self, block, step: ConvStep, t, state):
        """A pre-activation step's norm and act on the set it reads (N, C_reads, H, W)."""
        t = step.norm_of(block)(t)
        return t if step.act is None else step.act_of(block)(t)

    def conv(self, block, step: ConvStep, t, state):
        """One step on t: (N, C_reads, H, W) -> (N, C_writes, H', W') (a pre-activation
        step: its conv only, :meth:`pre` ran its norm and act)."""
        if step.unit is not None:
            return step.unit_of(block)(t)
        t = step.conv_of(block)(t)
        if step.pre_act:
            return t
        t = step.norm_of(block)(t)
        return t if step.act is None else step.act_of(block)(t)

    def at(self, block, pos: str, t, state):
        """A position decided on t (N, C_pos, H, W)."""
        return t

    def shortcut(self, block, s: BlockStructure, x, state):
        """The projection shortcut of the block input x."""
        return self.at(block, s.shortcut.writes, self.conv(block, s.shortcut, x, state), state)

    def merge(self, block, s: BlockStructure, out, identity, state):
        """The block's output before ``post_act``: branch out + shortcut identity."""
        if not s.residual:
            return out
        if s.drop_path is not None:
            out = s.drop_path_of(block)(out)
        return out + identity


class Masks(Part):
    """Gated forward: each position's tensor times its gates. ``state``: position -> gate
    values z_full (N, groups) for ``block.channel_gates[position]`` (a ``ChannelGate``)."""

    def enter(self, block, s, x, state):
        return x if s.entry is None else block.channel_gates[s.entry](x, state[s.entry])

    def at(self, block, pos, t, state):
        return block.channel_gates[pos](t, state[pos])  # (N, C, H, W) * (N, C, 1, 1)


class _Gathered(Part):
    """Runs the branch on kept channels only: gathers the branch input, adds the branch (and a
    slim projection) into the full-width stream at their kept channels."""

    def index(self, block, state, pos: str) -> Optional[torch.Tensor]:
        """Kept channel indices (k,) of a position; None: every channel."""
        raise NotImplementedError

    def enter(self, block, s, x, state):
        index = None if s.slim_stream else self.index(block, state, s.branch[0].reads)
        return x if index is None else x.index_select(1, index)  # (N, C, H, W) -> (N, k, H, W)

    def merge(self, block, s, out, identity, state):
        """out (N, k_out, H, W), identity (N, C_out or k_ds, H, W) -> (N, C_out, H, W). Out of
        place on the identity: x may be a stage output."""
        if s.drop_path is not None:
            out = s.drop_path_of(block)(out)
        if s.slim_stream:  # the stream holds the kept channels only: out as it is
            return out
        out_index = self.index(block, state, s.out)
        if not s.residual:
            if out_index is None:
                return out
            return scatter_channels(out, out_index, block.out_channels)  # k_out -> C_out
        ds_index = None if s.shortcut is None else self.index(block, state, s.shortcut.writes)
        if ds_index is None:  # identity is full width
            if out_index is None:
                return out + identity
            return identity.index_add(1, out_index, out)  # (N, C_out, ...) += out at out_index
        if out_index is None:  # out is ours: add the shortcut's k_ds channels into it
            return out.index_add_(1, ds_index, identity)
        full = out.new_zeros(out.shape[0], block.out_channels, *out.shape[2:])  # (N, C_out, ..)
        full.index_copy_(1, ds_index, identity)  # shortcut's k_ds channels
        return full.index_add_(1, out_index, out)  # + branch's k_out channels


class KeptChannels(_Gathered):
    """Pruned forward: the block's modules are already slim; its buffers ``index_<position>``
    (None: all kept) say where the sets sit in the full-width stream. A residual inverted
    residual may keep no channel of a set: its removed convs are ``nn.Identity`` (stride 1,
    so the empty tensor keeps its size) and a conv that reads nothing gives zeros, whose norm
    and activation still run, as in the gated block."""

    def index(self, block, state, pos):
        return getattr(block, 'index_' + pos)

    def conv(self, block, step, t, state):
        if step.unit is not None and isinstance(step.unit_of(block), nn.Identity):
            return t[:, :0]  # removed, keeps nothing: (N, 0, H, W), stride 1
        if t.shape[1] == 0:  # nothing kept upstream of this conv
            _, conv, norm, act = step.parts(block)
            out = t.new_zeros(t.shape[0], conv.out_channels, *conv_out_size(conv, t.shape[2:]))
            out = norm(out)
            return out if act is None else act(out)
        return super().conv(block, step, t, state)


class ActiveChannels(_Gathered):
    """Active-channel inference (batch 1): each conv runs its BN-folded weights gathered at the
    active channels of the sets it reads and writes. ``state``: (position -> active indices or
    None, step name -> folded (weight, bias)). A conv with no active filter gives an empty
    tensor of its output size; one with no active input gives its folded bias."""

    def index(self, block, state, pos):
        return state[0][pos]

    def pre(self, block, step, t, state):
        raise TypeError(f'{block.channel_structure.kind}: a pre-activation step has no '
                        f'BN-folded form (ReLU sits between the norm and the conv)')

    def conv(self, block, step, t, state):
        index, folded = state
        pre, conv, _, act = step.parts(block)
        for layer in pre:
            t = layer(t)  # the shortcut's average pool
        weight, bias = folded[step.name]
        out_index = index[step.writes]
        in_index = None if step.reads is None else index[step.reads]
        if out_index is not None and out_index.numel() == 0:
            return t.new_zeros(t.shape[0], 0, *conv_out_size(conv, t.shape[2:]))
        if t.shape[1] == 0 and conv.groups == 1:  # no input: the conv outputs its bias
            bias = bias if out_index is None else bias[out_index]
            out = bias[None, :, None, None].repeat(t.shape[0], 1, *conv_out_size(
                conv, t.shape[2:]))  # (k_out,) -> (N, k_out, H', W'), a real tensor
        else:
            out = gathered_conv(t, conv, weight, bias, out_index, in_index)
        return out if act is None else act(out)


class ConvMacs(Part):
    """Gated FLOPs: the walk carries ``(MACs so far, (H, W))`` instead of a tensor, ``state``
    is position -> active channel count ((N,) tensors; a missing position counts as full).
    The shortcut lands on the branch output's size (the add needs it), so its cost is taken
    per output pixel and multiplied in :meth:`merge`."""

    def enter(self, block, s, x, state):
        return x

    def pre(self, block, step, t, state):
        return t  # norms are not counted

    def _counts(self, step, conv, state):
        c_in = conv.in_channels if step.reads is None else \
            state.get(step.reads, conv.in_channels)
        return 1 if conv.groups > 1 else c_in, state.get(step.writes, conv.out_channels)

    def conv(self, block, step, t, state):
        macs, hw = t
        conv = step.parts(block)[1]
        new, hw = conv_macs(conv, hw, *self._counts(step, conv, state))
        return macs + new, hw

    def shortcut(self, block, s, x, state):
        conv = s.shortcut.parts(block)[1]
        return conv, self._counts(s.shortcut, conv, state)

    def merge(self, block, s, out, identity, state):
        total, hw = out
        if s.shortcut is not None:
            conv, (c_in, c_out) = identity
            k_area = conv.kernel_size[0] * conv.kernel_size[1]
            total = total + hw[0] * hw[1] * k_area * c_in * c_out
        return torch.as_tensor(total, dtype=torch.float32).reshape(-1)


PLAIN, MASKS, KEPT, ACTIVE, MACS = Part(), Masks(), KeptChannels(), ActiveChannels(), ConvMacs()


def walk(block: nn.Module, x, part: Part = PLAIN, state=None):
    """Run ``block`` through its ``channel_structure`` with ``part`` at the positions.

    Args:
        block: a block with a ``channel_structure`` (:class:`BlockStructure`).
        x: the block input (N, C_in, H, W) (what ``part`` carries; :class:`ConvMacs`:
            ``(0, (H, W))``).
        part, state: what happens at the positions, and its per-call data.

    Returns:
        the block output before ``post_act`` (N, C_out, H', W').
    """
    s = block.channel_structure
    out = part.enter(block, s, x, state)
    for step in s.branch:
        if step.pre_act:  # norm -> act -> conv: the set it reads is decided before the conv
            out = part.at(block, step.reads, part.pre(block, step, out, state), state)
        out = part.conv(block, step, out, state)
        if step.marks:
            out = part.at(block, step.writes, out, state)
    identity = x if s.shortcut is None else part.shortcut(block, s, x, state)
    return part.merge(block, s, out, identity, state)


def forward_block(block: nn.Module, x: torch.Tensor, part: Part = PLAIN, state=None
                  ) -> torch.Tensor:
    """:func:`walk` as a block's forward: under ``torch.utils.checkpoint`` when the block has
    ``with_cp`` and x needs a gradient, then the description's ``post_act``.

    Shapes:
        x: (N, C_in, H, W) -> (N, C_out, H / stride, W / stride)

    Example:
        >>> from mmpretrain.models.backbones.resnet import Bottleneck
        >>> block = Bottleneck(64, 64).eval()
        >>> block.channel_structure = structure_of(block)
        >>> x = torch.rand(1, 64, 8, 8)
        >>> torch.equal(forward_block(block, x), block(x))
        True
    """
    if block.with_cp and x.requires_grad:
        out = cp.checkpoint(walk, block, x, part, state, use_reentrant=False)
    else:
        out = walk(block, x, part, state)
    post = block.channel_structure.post_act_of
    return out if post is None else post(block)(out)


# ---------------------------------------------------------------------------------------------
# Pre-activation blocks: DenseNet (mmpretrain's DenseLayer, DenseTransition)
# ---------------------------------------------------------------------------------------------
# BN-ReLU-conv: a channel is removed at every consumer's input *after* its norm and act (a zero
# before the norm would come out as beta), so each step decides the set it reads
# (``pre_act``), and the sets a layer writes are decided by the layers that read them. A dense
# layer reads the concatenation of its block's input and all earlier layers' outputs: its
# ``input`` position is that concatenation, and a part carries the stream as it is
# (``slim_stream``: a thin or pruned stream holds the kept channels only)::
#
#     DenseLayer                                                   [set]: a position
#     cat(xs) (N, C_in, H, W) -> norm1 -> act -> [input] -> conv1 1x1  (N, bn_size * k, H, W)
#                             -> norm2 -> act -> [conv1] -> conv2 3x3  (N, k, H, W) -> (cat)
#     DenseTransition
#     x (N, C_in, H, W) -> norm -> act -> [input] -> conv 1x1 -> pool   (N, C_out, H / 2, W / 2)
#
# The [conv2] / [conv] sets are decided by their readers' [input] positions (the next layers',
# the transition's, the final norm's); ``position_widths`` gives their full widths.
DENSE_LAYER = BlockStructure(
    kind='DenseLayer', positions=('input', 'conv1', 'conv2'), entry=None, branch=(
        ConvStep('conv1', 'input', 'conv1', 'conv1', 'norm1', 'act', marks=False,
                 pre_act=True),  # 1x1 bottleneck
        ConvStep('conv2', 'conv1', 'conv2', 'conv2', 'norm2', 'act', marks=False,
                 pre_act=True),  # 3x3, growth
    ), residual=False, slim_stream=True)

DENSE_TRANSITION = BlockStructure(
    kind='DenseTransition', positions=('input', 'conv'), entry=None, branch=(
        ConvStep('conv', 'input', 'conv', 'conv', 'norm', 'act', marks=False,
                 pre_act=True),  # 1x1 compression (the average pool follows the walk)
    ), residual=False, slim_stream=True)
