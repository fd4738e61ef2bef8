"""Channel gating with Gumbel gates (Herrmann, Bowen, Zabih, "Channel selection using Gumbel
softmax" / end-to-end channel gating, Sec. 1.1, 3.2-3.4).

A gated tensor is split into groups of ``group_size`` channels; gate ``i`` of sample ``j`` is a
0/1 variable ``Z_ij`` that keeps (1) or zeroes (0) its group::

    block input x (N, C_in, H, W) --> pool --> gate head --> logits (N, G, 2) --> Z (N, G)
                                                                                   |
    tensor t (N, C, H, W) * Z expanded per group (first ``always_on`` groups fixed to 1)

* training: ``Z`` is a hard Gumbel-softmax sample at temperature 1 (straight-through: the forward
  pass uses the 0/1 sample, the backward pass the soft sample's gradient, Sec. 3.2);
* inference (``GATE_MODES``): ``'threshold'`` keeps a group when ``p_on > tau`` (deterministic,
  the paper's default with tau = 0.5, Sec. 3.3), ``'stochastic'`` samples, ``'on'`` keeps every
  group (the gates as a regulariser). Ensembles are N stochastic passes, done by TTA wrappers.

Two gate heads: :class:`DependentGateHead` (conditional computation, one small network per block
reading the pooled block input) and :class:`IndependentGateHead` (pruning, learnable logits).
Both start at logits (off, on) = (0.1, 4), i.e. ``p_on = sigmoid(3.9) ~ 0.98`` (authors' code).

Gated-off groups are multiplied by 0 (the released code multiplies them by 2, a bug), so a gated
block computes exactly what the physically smaller block without those filters computes, and
:meth:`GatedBlockMixin.flops` counts the MACs of that smaller block from the active channel counts.
"""
import math
from typing import Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .channel_structure import MACS, MASKS, forward_block, position_widths, walk
from .channel_structure import conv_macs  # noqa: F401  (its home before channel_structure)

GATE_MODES = ('threshold', 'stochastic', 'on')
GATE_TYPES = ('dependent', 'independent')
# Initial (off, on) logits of every gate: p_on = sigmoid(4 - 0.1) ~ 0.98, so training starts from
# (almost) the ungated network -- important when fine-tuning a pretrained one (authors' code).
GATE_LOGIT_INIT = (0.1, 4.0)


def check_gate_mode(mode: str, tau: float = 0.5) -> None:
    """Raise a clear error for an unknown inference mode or a threshold outside (0, 1)."""
    if mode not in GATE_MODES:
        raise ValueError(f'gate mode must be one of {list(GATE_MODES)}, got {mode!r}')
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 <= tau < 1:
        raise ValueError(f'gate threshold tau must be a number in [0, 1), got {tau!r}')


def sample_gates(logits: torch.Tensor, training: bool, mode: str = 'threshold',
                 tau: float = 0.5) -> torch.Tensor:
    """Gate values from (off, on) logits.

    Args:
        logits (Tensor): (..., 2), index 0 = off, index 1 = on.
        training (bool): sample with the straight-through Gumbel trick (``mode`` is ignored).
        mode (str): inference mode, one of ``GATE_MODES``.
        tau (float): threshold of ``'threshold'`` mode on ``p_on = softmax(logits)[..., 1]``.

    Returns:
        Tensor: z (...) with values in {0., 1.}; in training it carries the gradient of the soft
        Gumbel-softmax sample (temperature 1), so ``P(z = 1) = sigmoid(l_on - l_off)``.

    Example:
        >>> logits = torch.tensor([[0.1, 4.0], [3.0, -1.0]])
        >>> sample_gates(logits, training=False)
        tensor([1., 0.])
        >>> sample_gates(logits, training=False, mode='on')
        tensor([1., 1.])
    """
    if logits.shape[-1] != 2:
        raise ValueError(f'gate logits must have a last dimension of 2 (off, on), '
                         f'got shape {tuple(logits.shape)}')
    if training:
        # Gumbel(0, 1) noise; temperature 1 (Sec. 3.2), so soft = softmax(logits + g).
        gumbels = -torch.empty_like(logits).exponential_().log()
        soft = (logits + gumbels).softmax(-1)[..., 1]  # (..., 2) -> (...)
        hard = (soft > 0.5).to(soft.dtype)  # argmax of two entries
        return hard - soft.detach() + soft  # straight-through: value hard, gradient soft
    check_gate_mode(mode, tau)
    if mode == 'on':
        return logits.new_ones(logits.shape[:-1])
    if mode == 'threshold':
        return (logits.softmax(-1)[..., 1] > tau).to(logits.dtype)
    gumbels = -torch.empty_like(logits).exponential_().log()
    return ((logits + gumbels).argmax(-1) == 1).to(logits.dtype)


class ChannelGate(nn.Module):
    """One gated tensor position: multiplies each group of channels by its gate.

    Args:
        channels (int): C, channels of the gated tensor.
        group_size (int): filters per gate (the paper's "granularity", Sec. 4.2); the last group
            is smaller when C is not a multiple.
        always_on (int): leading groups that are never gated (the paper keeps 1 open on layers a
            residual connection cannot bypass, Sec. 4.2). Default 1.

    Shapes:
        x: (N, C, H, W), z_full: (N, num_groups) -> (N, C, H, W)

    Example:
        >>> gate = ChannelGate(10, 4)
        >>> gate.num_groups, gate.num_gates, gate.group_sizes.tolist()
        (3, 2, [4.0, 4.0, 2.0])
        >>> gate.channel_mask(torch.tensor([[1., 0., 1.]])).int().tolist()
        [[1, 1, 1, 1, 0, 0, 0, 0, 1, 1]]
    """

    def __init__(self, channels: int, group_size: int, always_on: int = 1):
        super().__init__()
        if channels < 1:
            raise ValueError(f'channels must be >= 1, got {channels}')
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f'group_size (filters per gate) must be an integer >= 1, '
                             f'got {group_size!r}')
        self.channels = channels
        self.group_size = group_size
        self.num_groups = math.ceil(channels / group_size)
        if not 0 <= always_on <= self.num_groups:
            raise ValueError(f'always_on must be in [0, {self.num_groups}] for {channels} '
                             f'channels in groups of {group_size}, got {always_on}')
        self.always_on = always_on
        self.num_gates = self.num_groups - always_on
        # Not persistent: the state dict of a gated block stays that of the plain block + gate.
        self.register_buffer('group_index', torch.arange(channels) // group_size,
                             persistent=False)  # (C,) group of each channel
        sizes = torch.full((self.num_groups,), float(group_size))
        sizes[-1] = channels - group_size * (self.num_groups - 1)
        self.register_buffer('group_sizes', sizes, persistent=False)  # (num_groups,)

    def full_gates(self, z: torch.Tensor) -> torch.Tensor:
        """Prepend the always-on groups: z (N, num_gates) -> z_full (N, num_groups)."""
        if self.always_on == 0:
            return z
        return torch.cat([z.new_ones(z.shape[0], self.always_on), z], 1)

    def channel_mask(self, z_full: torch.Tensor) -> torch.Tensor:
        """(N, num_groups) -> (N, C) bool, True where the channel is computed."""
        return z_full[:, self.group_index] > 0.5  # (N, num_groups) -> (N, C)

    def active_channels(self, z_full: torch.Tensor) -> torch.Tensor:
        """Differentiable number of active channels: (N, num_groups) -> (N,)."""
        return z_full @ self.group_sizes.to(z_full.dtype)

    def forward(self, x: torch.Tensor, z_full: torch.Tensor) -> torch.Tensor:
        mask = z_full[:, self.group_index]  # (N, num_groups) -> (N, C)
        return x * mask[:, :, None, None].to(x.dtype)  # (N, C, 1, 1) broadcast over H, W

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, group_size={self.group_size}, '
                f'num_groups={self.num_groups}, always_on={self.always_on}')


def _init_on_logits(logits: torch.Tensor) -> None:
    """Set (G, 2) logits/biases to GATE_LOGIT_INIT in place."""
    with torch.no_grad():
        logits[:, 0] = GATE_LOGIT_INIT[0]
        logits[:, 1] = GATE_LOGIT_INIT[1]


class DependentGateHead(nn.Module):
    """Data-dependent gate logits: per gate FC(C -> hidden) -> BN -> ReLU -> FC(hidden -> 2).

    The G small networks run stacked: one Linear C -> hidden*G, one BatchNorm1d, and a grouped
    1x1 conv1d (hidden -> 2 per gate). The final bias starts at (0.1, 4) so gates start ~98% on.
    In training with a batch of one, the BN uses its running statistics (a batch statistic of
    one sample is undefined), e.g. for mmdet's batch-1 fine-tuning without ``norm_eval``.

    Args:
        in_channels (int): C of the pooled block input.
        num_gates (int): G, the learned gates of the block (all positions together).
        hidden (int): width of each gate's network. Default 16 (the paper's).

    Shapes:
        pooled: (N, C) -> logits (N, G, 2), index 1 = on.

    Example:
        >>> head = DependentGateHead(64, num_gates=5).eval()
        >>> logits = head(torch.rand(2, 64))
        >>> logits.shape
        torch.Size([2, 5, 2])
    """

    def __init__(self, in_channels: int, num_gates: int, hidden: int = 16):
        super().__init__()
        if num_gates < 1 or hidden < 1:
            raise ValueError(f'a gate head needs num_gates >= 1 and hidden >= 1, '
                             f'got {num_gates}, {hidden}')
        self.in_channels = in_channels
        self.num_gates = num_gates
        self.hidden = hidden
        self.fc1 = nn.Linear(in_channels, hidden * num_gates, bias=False)  # BN follows
        self.bn = nn.BatchNorm1d(hidden * num_gates)
        self.fc2 = nn.Conv1d(hidden * num_gates, 2 * num_gates, 1, groups=num_gates)
        self.init_weights()

    def init_weights(self):
        """Called by mmengine before a Pretrained checkpoint is loaded over the backbone."""
        _init_on_logits(self.fc2.bias.view(self.num_gates, 2))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        h = self.fc1(pooled)  # (N, C) -> (N, hidden * G)
        if bn.training and h.shape[0] == 1:
            h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                             bn.eps)  # running statistics, left unchanged
        else:
            h = bn(h)  # the module: momentum=None (cumulative average) and num_batches_tracked
        h = F.relu(h, inplace=True)
        logits = self.fc2(h[:, :, None])  # (N, hidden * G, 1) -> (N, 2 * G, 1)
        return logits.view(-1, self.num_gates, 2)  # (N, 2 * G, 1) -> (N, G, 2)

    def flops(self, hw: Tuple[int, int]) -> float:
        """MACs per image: the average pool (H*W*C, counted as in the paper's S1.4) and the
        per-gate C -> hidden -> 2 networks."""
        return float(hw[0] * hw[1] * self.in_channels
                     + self.num_gates * self.hidden * (self.in_channels + 2))


class IndependentGateHead(nn.Module):
    """Data-independent gate logits (pruning): a learnable (G, 2) tensor, init (0.1, 4).

    Args:
        num_gates (int): G.

    Shapes:
        -> logits (1, G, 2), broadcast over the batch (each sample still draws its own Z).

    Example:
        >>> IndependentGateHead(3)().shape
        torch.Size([1, 3, 2])
    """

    def __init__(self, num_gates: int):
        super().__init__()
        if num_gates < 1:
            raise ValueError(f'a gate head needs num_gates >= 1, got {num_gates}')
        self.num_gates = num_gates
        self.logits = nn.Parameter(torch.empty(num_gates, 2))
        self.init_weights()

    def init_weights(self):
        _init_on_logits(self.logits)

    def forward(self, pooled: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.logits[None]  # (G, 2) -> (1, G, 2)

    def flops(self, hw: Tuple[int, int]) -> float:
        return 0.0  # thresholded logits are constants: no cost at inference


class GateRecord(NamedTuple):
    """What one gated block contributes to the gate losses and statistics (its last forward).

    Attributes:
        z (Tensor): (N, G_b) the block's learned gates (always-on groups excluded), with graph in
            training.
        flops (Tensor): (N,) the block's conv MACs from its active channel counts
            (differentiable).
        full_flops (float): the block's conv MACs with every gate on, same input size.
        gate_flops (float): MACs of its gate head per image (0 for independent gates).
    """
    z: torch.Tensor
    flops: torch.Tensor
    full_flops: float
    gate_flops: float


class GatedBlockMixin:
    """Gates on the positions of a block's channel structure; put before the upstream block.

    A block calls :meth:`_init_gated_structure` (or :meth:`_init_gates`) at the end of
    ``__init__``. Its forward samples all gates at once from the block input
    (:meth:`sample_block_gates`) and walks the block's ``channel_structure`` with
    :class:`~mmmod.models.layers.channel_structure.Masks`, which multiplies each position's
    tensor by ``self.channel_gates[position](t, z[position])``; :meth:`flops` walks the same
    description with :class:`~mmmod.models.layers.channel_structure.ConvMacs`.

    Two kinds of gate modules: ``gate`` is the block's gate head (it produces the logits of all
    the block's learned gates; every gate parameter lives in it, under ``gate.*`` in state
    dicts), and ``channel_gates`` (position -> :class:`ChannelGate`, no parameters and nothing
    in state dicts) apply the sampled gates per position. ``gate_positions`` are the gated
    positions.

    Side outputs of the last forward (never returned): ``last_gates`` position -> z_full
    (N, num_groups) and ``last_hw`` (input H, W).
    """

    gate_positions: Tuple[str, ...] = ()

    def _init_gated_structure(self, structure, granularity: Dict[str, int], always_on: int,
                              gate_type: str = 'dependent', gate_hidden: int = 16) -> None:
        """A gate per position of ``structure`` (a ``BlockStructure``), ``granularity[p]``
        filters per gate; the gate head reads the block input (``in_channels``)."""
        self.channel_structure = structure
        widths = position_widths(self)  # position -> channels, forward order
        self._init_gates({p: (c, granularity[p], always_on) for p, c in widths.items()},
                         self.in_channels, gate_type, gate_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H / stride, W / stride), each position masked."""
        z = self.sample_block_gates(x)  # position -> (N, groups)
        return forward_block(self, x, MASKS, z)

    def _init_gates(self, positions: Dict[str, Tuple[int, int, int]], in_channels: int,
                    gate_type: str = 'dependent', gate_hidden: int = 16) -> None:
        """positions: name -> (channels, group_size, always_on), in forward order."""
        if gate_type not in GATE_TYPES:
            raise ValueError(f'gate_type must be one of {list(GATE_TYPES)}, got {gate_type!r}')
        self.gate_type = gate_type
        self.gate_positions = tuple(positions)
        self.channel_gates = nn.ModuleDict(
            {p: ChannelGate(c, g, a) for p, (c, g, a) in positions.items()})
        self.num_learned_gates = sum(g.num_gates for g in self.channel_gates.values())
        if self.num_learned_gates == 0:
            self.gate = None  # every group always on: nothing to learn
        elif gate_type == 'dependent':
            self.gate = DependentGateHead(in_channels, self.num_learned_gates, gate_hidden)
        else:
            self.gate = IndependentGateHead(self.num_learned_gates)
        self.gate_mode = 'threshold'
        self.gate_tau = 0.5
        self.last_gates: Dict[str, torch.Tensor] = {}
        self.last_hw: Optional[Tuple[int, int]] = None

    def sample_block_gates(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """All gates of the block from its input x (N, C_in, H, W): position -> (N, groups)."""
        n = x.shape[0]
        self.last_hw = (x.shape[2], x.shape[3])
        if self.gate is None:
            z = x.new_zeros(n, 0)
        else:
            pooled = x.mean((2, 3)) if self.gate_type == 'dependent' else None  # (N, C_in)
            logits = self.gate(pooled).expand(n, -1, -1)  # (N or 1, G, 2) -> (N, G, 2)
            z = sample_gates(logits, self.training, self.gate_mode, self.gate_tau)  # (N, G)
        z = z.to(x.dtype)
        out, start = {}, 0
        for pos, gate in self.channel_gates.items():
            z_full = gate.full_gates(z[:, start:start + gate.num_gates])  # (N, num_groups)
            out[pos] = z_full
            start += gate.num_gates
        self.last_gates = out
        return out

    def active_counts(self, gates: Optional[Dict[str, torch.Tensor]] = None
                      ) -> Dict[str, torch.Tensor]:
        """Active channels per position, (N,) each, from ``gates`` (default: the last ones)."""
        gates = self.last_gates if gates is None else gates
        return {p: self.channel_gates[p].active_channels(z) for p, z in gates.items()}

    def flops(self, counts: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Conv MACs of the block, (N,), from active channel counts per position (at
        ``last_hw``); a position missing from ``counts`` counts as fully on."""
        return walk(self, (0, self.last_hw), MACS, counts)

    def full_flops(self) -> float:
        counts = {p: torch.tensor([float(g.channels)]) for p, g in self.channel_gates.items()}
        return float(self.flops(counts)[0])

    def gate_flops(self) -> float:
        return 0.0 if self.gate is None else self.gate.flops(self.last_hw)

    def gate_record(self) -> GateRecord:
        """The :class:`GateRecord` of the last forward."""
        if not self.last_gates:
            raise RuntimeError(f'{type(self).__name__} has no gates recorded; run a forward '
                               f'pass first')
        z = torch.cat([zf[:, self.channel_gates[p].always_on:]
                       for p, zf in self.last_gates.items()], 1)  # (N, G_b) learned gates only
        return GateRecord(z, self.flops(self.active_counts()), self.full_flops(),
                          self.gate_flops())

    def set_gate_mode(self, mode: str, tau: Optional[float] = None) -> None:
        tau = self.gate_tau if tau is None else tau
        check_gate_mode(mode, tau)
        self.gate_mode, self.gate_tau = mode, tau


def iter_gated_blocks(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """(name, block) of every gated block of ``model``, in forward (registration) order."""
    for name, module in model.named_modules():
        if isinstance(module, GatedBlockMixin):
            yield name, module


def gate_records(model: nn.Module) -> Sequence[GateRecord]:
    """The :class:`GateRecord` of every gated block of ``model`` (its last forward)."""
    return [block.gate_record() for _, block in iter_gated_blocks(model)]
