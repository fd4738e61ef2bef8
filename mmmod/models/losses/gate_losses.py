"""Batch activation losses for Gumbel channel gates (end-to-end channel gating, Eq. 1, Sec. 3.4,
supplementary Eq. 3).

Both losses read the list of :class:`~mmmod.models.layers.gumbel_gate.GateRecord` s the gated
backbone collects after its forward (one per gated block, see ``GatedBackboneMixin``):

* :class:`BatchActivationLoss`: ``(t - mean Z)^2``, the mean over every learned gate of every
  sample of the batch (Eq. 1). Its minimum allows individual gates to polarise to 0 or 1
  (Sec. 3.1), unlike a per-gate target.
* :class:`FLOPsActivationLoss`: ``(t - FLOPs(Z) / FLOPs(all on))^2`` where FLOPs(Z) is the batch
  mean of the gated blocks' conv MACs computed from their active channel counts (Sec. 3.4), so
  a gate weighs as much as the computation it controls.

``one_sided=True`` is the "const-quad" variant (supplementary Eq. 3): zero once the rate is at or
below t, quadratic above, so the network is not pushed back up when it can run cheaper.
``target`` is a plain attribute: hooks anneal it (``GateTargetHook``).
"""
from typing import Sequence

import torch
import torch.nn as nn

from mmmod.registry import MODELS
from ..layers.gumbel_gate import GateRecord


class _GateLoss(nn.Module):

    def __init__(self, target: float = 0.5, loss_weight: float = 1.0, one_sided: bool = False):
        super().__init__()
        self.target = target  # validated by the setter
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)) \
                or loss_weight < 0:
            raise ValueError(f'loss_weight must be a number >= 0, got {loss_weight!r}')
        self.loss_weight = float(loss_weight)
        self.one_sided = bool(one_sided)

    @property
    def target(self) -> float:
        return self._target

    @target.setter
    def target(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f'the target activation rate must be a number in [0, 1], '
                             f'got {value!r}')
        self._target = float(value)

    def rate(self, records: Sequence[GateRecord]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, records: Sequence[GateRecord]) -> torch.Tensor:
        """records: one :class:`GateRecord` per gated block -> scalar loss."""
        if not records:
            raise ValueError(f'{type(self).__name__} got no gate records: the model has no '
                             f'gated blocks or has not run a forward pass')
        excess = self.rate(records) - self._target
        if self.one_sided:
            excess = excess.clamp(min=0)  # const-quad: 0 for rate <= t
        return self.loss_weight * excess.square()

    def extra_repr(self) -> str:
        return (f'target={self._target}, loss_weight={self.loss_weight}, '
                f'one_sided={self.one_sided}')


@MODELS.register_module()
class BatchActivationLoss(_GateLoss):
    """``loss_weight * (t - mean Z)^2`` over all learned gates of the batch (Eq. 1).

    Args:
        target (float): t, the target activation rate in [0, 1]. Default 0.5.
        loss_weight (float): Default 1.0 (the paper adds the loss unweighted).
        one_sided (bool): const-quad variant (supplementary Eq. 3). Default False.

    Example:
        >>> from mmmod.models.layers.gumbel_gate import GateRecord
        >>> z = torch.tensor([[1., 1., 0., 1.]])  # (N=1, G=4): rate 0.75
        >>> rec = GateRecord(z, torch.ones(1), 1.0, 0.0)
        >>> BatchActivationLoss(target=0.5)([rec])
        tensor(0.0625)
        >>> BatchActivationLoss(target=0.8, one_sided=True)([rec])
        tensor(0.)
    """

    def rate(self, records: Sequence[GateRecord]) -> torch.Tensor:
        z = torch.cat([r.z for r in records], 1)  # (N, G_b) per block -> (N, G)
        if z.numel() == 0:
            raise ValueError('BatchActivationLoss: the model has no learned gates (every group '
                             'is always on); use a finer granularity')
        return z.mean()


@MODELS.register_module()
class FLOPsActivationLoss(_GateLoss):
    """``loss_weight * (t - FLOPs(Z) / FLOPs(all on))^2`` (Sec. 3.4).

    FLOPs(Z) is the sum over the gated blocks of their conv MACs from active channel counts,
    averaged over the batch; gate-network cost is not part of it (as in the paper).

    Args:
        target, loss_weight, one_sided: as :class:`BatchActivationLoss`.

    Example:
        >>> from mmmod.models.layers.gumbel_gate import GateRecord
        >>> recs = [GateRecord(torch.ones(2, 1), torch.tensor([30., 10.]), 40.0, 0.0),
        ...         GateRecord(torch.ones(2, 1), torch.tensor([60., 60.]), 60.0, 0.0)]
        >>> FLOPsActivationLoss(target=0.5)(recs)  # ratio (90 + 70) / 2 / 100 = 0.8
        tensor(0.0900)
    """

    def rate(self, records: Sequence[GateRecord]) -> torch.Tensor:
        flops = torch.stack([r.flops for r in records]).sum(0)  # (blocks, N) -> (N,)
        full = sum(r.full_flops for r in records)
        return flops.mean() / full
