"""CUCB channel bandit: which channels a dynamic-channel-execution step runs.

Spasov & Lio, "Dynamic Neural Network Channel Execution for Efficient Training", Alg. 1. Every
output channel of a layer whose width is free (not tied by a residual add) is an arm. Per arm
the bandit keeps ``T`` (steps it was active) and ``mu`` (mean saliency over those steps); each
training step it activates the super-arm ``S``, the global top fraction ``p`` of arms by the
upper confidence bound (Alg. 1 step 7)::

    ucb = mu + sqrt(3 ln t / (2 T))          # T = 0: +inf (untried arms first)

and after the step observes the saliency of the active channels (Eq. 2-3)::

    sal_raw[k] = | sum_{batch, map} dL/dh_k * h_k |        # first-order loss change
    sal[k]     = sal_raw[k] / || sal_raw[active of layer] ||_2

:class:`ChannelBandit` is the bandit: arm bookkeeping, selection and updates, on flat tensors
with one slice per layer. A step's selection acts at the blocks' channel positions
(:mod:`~mmmod.models.layers.channel_structure`) through one of two parts of the same walk:
:class:`MaskedChannels` (the paper's implementation: inactive outputs times 0) or
:class:`ThinChannels` (the active sub-network only, full weights gathered per step), both
recording saliencies in backward through :class:`BanditStep`. The state (``T``, ``mu``, the
step counter) is held in buffers, so it goes into checkpoints and ``--resume`` continues from
it; the random tie-breaking draws from a generator seeded by ``(seed, step)``, so a resumed run
and every rank of a distributed run select exactly what an uninterrupted single run selects.

Choices where the paper is silent, each an option:

- ``|S| = floor(p * arms)`` (the paper's "20% = 1100 channels" of VGG-19's 5504), raised to the
  number of layers: every layer keeps at least one channel, the best by the same score --
  a layer with none would disconnect the network.
- Initialisation (Alg. 1 step 2): ``init='untried'`` ranks arms with ``T = 0`` above all others
  (ties broken at random), so ``ceil(1 / p)`` steps try every arm; ``init='per_arm'`` is the
  literal round, one step per arm: step ``i`` activates arm ``i`` plus a random rest of ``S``.
  Either way ``t`` starts at the number of arms (step 3).
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .channel_structure import Part, _Gathered, gathered_conv

__all__ = [
    'ChannelBandit', 'BANDIT_INITS', 'FIXED_SELECTIONS', 'raw_saliency', 'BanditStep',
    'MaskedChannels', 'ThinChannels', 'thin_norm', 'EXECUTIONS'
]

BANDIT_INITS = ('untried', 'per_arm')
FIXED_SELECTIONS = ('mean', 'random')


def raw_saliency(h: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Eq. 2 before the absolute value: ``sum over batch and map of dL/dh * h`` per channel.

    Signed, so that ranks can sum it before ``abs`` (a batch split across ranks then gives the
    saliency of the whole batch). The paper's ``1 / M`` is left out: it is the same for every
    channel of a layer and cancels in Eq. 3.

    Args:
        h (Tensor): (N, C, H, W) or (N, C) feature map.
        grad (Tensor): dL/dh, same shape.

    Returns:
        Tensor: (C,) in float64.

    Example:
        >>> h = torch.ones(2, 3, 4, 4); g = torch.full_like(h, 0.5)
        >>> raw_saliency(h, g)
        tensor([16., 16., 16.], dtype=torch.float64)
    """
    dims = [d for d in range(h.dim()) if d != 1]
    return (grad.detach() * h.detach()).sum(dims).double()


class ChannelBandit(nn.Module):
    """CUCB over the output channels of ``widths``, one entry per layer.

    Args:
        widths (Sequence[int]): channels (arms) of each layer, in network order.
        ratio (float): p, the fraction of all arms active per step, in (0, 1].
        init (str): ``'untried'`` or ``'per_arm'`` (see the module docstring).
        seed (int): seeds the tie-breaking; share it across ranks.

    Shapes:
        :meth:`select` -> list of (C_l,) bool masks; :meth:`update` takes (C_l,) saliencies.

    Example:
        >>> bandit = ChannelBandit([4, 2], ratio=0.5)
        >>> masks = bandit.select()
        >>> [m.shape[0] for m in masks], sum(int(m.sum()) for m in masks), int(bandit.step)
        ([4, 2], 3, 0)
        >>> bandit.update([torch.rand(4), torch.rand(2)], masks)
        >>> int(bandit.step), int(bandit.counts.sum())
        (1, 3)
    """

    def __init__(self, widths: Sequence[int], ratio: float, init: str = 'untried',
                 seed: int = 0):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f'a channel bandit needs at least one layer with >= 1 channel, '
                             f'got widths {widths}; no arms were found in the model')
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or \
                not 0 < ratio <= 1:
            raise ValueError(f'the active-channel ratio p must be in (0, 1], got {ratio!r}')
        if init not in BANDIT_INITS:
            raise ValueError(f'init must be one of {BANDIT_INITS}, got {init!r}')
        self.widths = tuple(widths)
        self.ratio = float(ratio)
        self.init = init
        self.seed = int(seed)
        self.num_arms = sum(widths)
        self.num_active = min(self.num_arms,
                              max(len(widths), math.floor(self.ratio * self.num_arms)))
        # layer of each arm, (A,): the per-layer minimum and normalisation group by it
        self.register_buffer('layer_of_arm', torch.repeat_interleave(
            torch.arange(len(widths)), torch.tensor(widths)), persistent=False)
        self.register_buffer('counts', torch.zeros(self.num_arms, dtype=torch.int64))  # T
        self.register_buffer('means', torch.zeros(self.num_arms, dtype=torch.float64))  # mu
        self.register_buffer('step', torch.zeros((), dtype=torch.int64))  # updates so far

    def split(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """(A,) -> one (C_l,) view per layer."""
        return list(flat.split(self.widths))

    def _generator(self, salt: int = 0) -> torch.Generator:
        # a function of (seed, step): resumed and distributed runs draw the same numbers
        return torch.Generator().manual_seed(
            (self.seed * 1_000_003 + int(self.step) * 7919 + salt) % (2**63))

    def ucb(self) -> torch.Tensor:
        """(A,) upper confidence bounds at this step; +inf for untried arms."""
        t = self.num_arms + int(self.step) + 1  # Alg. 1: t starts at the number of arms
        bonus = torch.sqrt(3 * math.log(t) / (2 * self.counts.double()))  # T = 0 -> inf
        return self.means + bonus

    def _top(self, scores: torch.Tensor, generator: torch.Generator,
             forced: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(A,) bool mask of the ``num_active`` best arms, each layer's best included; equal
        scores ordered by a random permutation."""
        shuffle = torch.randperm(self.num_arms, generator=generator)  # (A,) tie-break order
        order = shuffle[torch.sort(scores[shuffle], descending=True, stable=True).indices]
        mask = torch.zeros(self.num_arms, dtype=torch.bool)
        if forced is not None:
            mask[forced] = True
        rank = torch.empty_like(order)
        rank[order] = torch.arange(self.num_arms)  # (A,) position of each arm in ``order``
        best = torch.full((len(self.widths), ), self.num_arms).scatter_reduce(
            0, self.layer_of_arm.cpu(), rank, 'amin')  # (L,) rank of each layer's best arm
        mask[order[best]] = True
        rest = order[~mask[order]]  # (A - |mask|,) in rank order
        mask[rest[:max(0, self.num_active - int(mask.sum()))]] = True
        return mask

    def select(self) -> List[torch.Tensor]:
        """The super-arm S of this step (Alg. 1 steps 7-8): one (C_l,) bool mask per layer."""
        generator = self._generator()
        step = int(self.step)
        if self.init == 'per_arm' and step < self.num_arms:
            # the literal initialisation round: arm ``step`` plus a random rest of S
            forced = torch.tensor([step])
            mask = self._top(torch.zeros(self.num_arms, dtype=torch.float64), generator,
                             forced)
        else:
            mask = self._top(self.ucb(), generator)
        return self.split(mask)

    def select_fixed(self, by: str = 'mean') -> List[torch.Tensor]:
        """The final topology (Alg. 1 step 12): the top arms by ``mu`` alone, or ``'random'``
        (the paper's Fig. 3 baseline)."""
        if by not in FIXED_SELECTIONS:
            raise ValueError(f'a fixed selection is by one of {FIXED_SELECTIONS}, got {by!r}')
        scores = self.means if by == 'mean' else torch.zeros(self.num_arms, dtype=torch.float64)
        return self.split(self._top(scores, self._generator(salt=1)))

    @torch.no_grad()
    def update(self, raw: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
        """Observe one step (Alg. 1 step 11): T and mu of the active arms only.

        Args:
            raw (Sequence[Tensor]): per layer (C_l,) signed raw saliencies
                (:func:`raw_saliency`, summed over ranks); inactive entries are ignored.
            masks (Sequence[Tensor]): the (C_l,) masks :meth:`select` returned.
        """
        if len(raw) != len(self.widths) or len(masks) != len(self.widths):
            raise ValueError(f'expected {len(self.widths)} layers of saliencies and masks, got '
                             f'{len(raw)} and {len(masks)}')
        sal = torch.cat([r.detach().double().abs().flatten().cpu() for r in raw])  # (A,)
        active = torch.cat([m.flatten().cpu() for m in masks]).bool()  # (A,)
        if sal.numel() != self.num_arms or active.numel() != self.num_arms:
            raise ValueError(f'saliencies and masks must cover the {self.num_arms} arms of '
                             f'widths {self.widths}')
        # Eq. 3: l2 over the active channels of the same layer
        layer = self.layer_of_arm.cpu()
        norms = torch.zeros(len(self.widths), dtype=torch.float64).index_add_(
            0, layer, torch.where(active, sal, 0).square()).sqrt()  # (L,)
        norm = norms[layer]  # (A,)
        sal = torch.where(norm > 0, sal / norm.clamp_min(torch.finfo(torch.float64).tiny), 0)
        counts = self.counts.cpu() + active.long()
        means = self.means.cpu()
        means = torch.where(active, means + (sal - means) / counts.clamp_min(1), means)
        self.counts.copy_(counts)
        self.means.copy_(means)
        self.step += 1

    @property
    def untried(self) -> int:
        """Arms never active so far."""
        return int((self.counts == 0).sum())

    def extra_repr(self) -> str:
        return (f'arms={self.num_arms}, layers={len(self.widths)}, ratio={self.ratio}, '
                f'active={self.num_active}, init={self.init!r}')


# ---------------------------------------------------------------------------------------------
# The bandit's selection at a block's channel positions (parts of the channel-structure walk)
# ---------------------------------------------------------------------------------------------
class BanditStep:
    """One step's selection as a block (or the stem) sees it.

    Args:
        masks (dict): position -> (C,) bool active channels (absent: all active).
        saliency (dict | None): position -> (C,) float64 accumulator of the raw saliency
            (:func:`raw_saliency`), filled during backward; None: not recorded (eval).
    """

    def __init__(self, masks: Dict[str, torch.Tensor],
                 saliency: Optional[Dict[str, torch.Tensor]] = None):
        self.masks = masks
        self.index = {pos: torch.nonzero(m).flatten() for pos, m in masks.items()}  # (k,)
        self.scale = {pos: m.float() for pos, m in masks.items()}  # (C,)
        self.saliency = saliency

    def get(self, pos: str) -> Optional[torch.Tensor]:
        """Active indices (k,) of a position, None where every channel is active (the
        :class:`~mmmod.models.layers.channel_structure.KeptChannels` protocol)."""
        return self.index.get(pos)

    def record(self, pos: str, t: torch.Tensor, thin: bool) -> None:
        """Have backward add t's raw saliency into ``saliency[pos]``; t is (N, C, H, W), or
        (N, k, H, W) holding the active channels when ``thin``."""
        if self.saliency is None or pos not in self.saliency or not t.requires_grad:
            return
        acc, index, h = self.saliency[pos], self.index[pos] if thin else None, t.detach()

        def hook(grad):
            raw = raw_saliency(h, grad)  # (k,) or (C,)
            if index is None:
                acc.add_(raw)
            else:
                acc.index_add_(0, index.to(acc.device), raw)  # (k,) -> (C,) at the actives

        t.register_hook(hook)


def thin_norm(norm: nn.Module, t: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
    """``norm`` (a BatchNorm) on t (N, k, H, W), the channels ``index`` (k,) of its input: its
    affine parameters gathered there (gradients flow back into the full ones) and, in
    training, the running statistics of those channels updated in place, as upstream's
    ``_BatchNorm.forward`` updates all of them."""
    if index is None:
        return norm(t)
    if not isinstance(norm, _BatchNorm):
        raise TypeError(f'thin execution needs BatchNorm layers, got {type(norm).__name__}; '
                        "use execution='masked'")
    factor = 0.0
    if norm.training and norm.track_running_stats:
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None \
            else norm.momentum
    stats = norm.track_running_stats and norm.running_mean is not None
    mean = norm.running_mean.index_select(0, index) if stats else None  # (k,)
    var = norm.running_var.index_select(0, index) if stats else None
    weight = None if norm.weight is None else norm.weight.index_select(0, index)
    bias = None if norm.bias is None else norm.bias.index_select(0, index)
    out = F.batch_norm(t, mean, var, weight, bias, norm.training or not stats, factor, norm.eps)
    if norm.training and stats:
        with torch.no_grad():
            norm.running_mean.index_copy_(0, index, mean)
            norm.running_var.index_copy_(0, index, var)
    return out


class MaskedChannels(Part):
    """The paper's execution: inactive channels of a position multiplied by 0. ``state``: a
    :class:`BanditStep`."""

    def at(self, block, pos, t, state):
        scale = state.scale.get(pos)
        if scale is not None:
            t = t * scale.to(t)[None, :, None, None]  # (N, C, H, W) * (1, C, 1, 1)
            state.record(pos, t, thin=False)
        return t


class ThinChannels(_Gathered):
    """Really thin execution: each conv runs its full weights gathered at the active filters of
    the position it writes and the active channels of the one it reads; norms on the active
    channels (:func:`thin_norm`). Equal to :class:`MaskedChannels` on the active channels; the
    inactive ones are never computed. ``state``: a :class:`BanditStep`."""

    def index(self, block, state, pos):
        return state.get(pos)

    def conv(self, block, step, t, state):
        out_index = state.get(step.writes)
        in_index = None if step.reads is None else state.get(step.reads)
        if out_index is None and in_index is None:
            return super().conv(block, step, t, state)
        pre, conv, norm, act = step.parts(block)
        for layer in pre:
            t = layer(t)  # the shortcut's average pool
        out = gathered_conv(t, conv, conv.weight, conv.bias, out_index, in_index)
        if step.pre_act:  # its norm and act ran in pre()
            return out
        out = thin_norm(norm, out, out_index)
        return out if act is None else act(out)

    def pre(self, block, step, t, state):
        """A pre-activation step's norm on the active channels it reads, then its act."""
        t = thin_norm(step.norm_of(block), t, state.get(step.reads))
        return t if step.act is None else step.act_of(block)(t)

    def at(self, block, pos, t, state):
        if pos in state.index:
            state.record(pos, t, thin=True)
        return t


MASKED, THIN = MaskedChannels(), ThinChannels()
#: How a training step runs the selection.
EXECUTIONS = {'masked': MASKED, 'thin': THIN}
