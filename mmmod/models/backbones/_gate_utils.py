"""What GatedResNet and GatedMobileNetV2 share: the granularity tables' validation, the gate
loss carried by the backbone output, inference modes and gate statistics."""
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch

from mmmod.registry import MODELS
from ..layers.gumbel_gate import GateRecord, check_gate_mode, iter_gated_blocks


def resolve_granularity(granularity: Union[str, Mapping], settings: Mapping[str, Mapping],
                        positions: Sequence[str], num_stages: int, owner: str
                        ) -> List[Dict[str, int]]:
    """Filters per gate, per stage and position.

    Args:
        granularity: a name of ``settings`` (e.g. ``'low'``) or a dict position -> int (all
            stages) or sequence of ints (one per stage).
        settings: name -> dict position -> per-stage tuple.
        positions: the positions every stage needs.
        num_stages: stages (ResNet stages, MobileNetV2 table rows) to cover.
        owner: class name for the error messages.

    Returns:
        list[dict[str, int]]: one dict position -> group size per stage.

    Example:
        >>> resolve_granularity(dict(a=4, b=(1, 2)), {}, ('a', 'b'), 2, 'Net')
        [{'a': 4, 'b': 1}, {'a': 4, 'b': 2}]
    """
    if isinstance(granularity, str):
        if granularity not in settings:
            raise KeyError(f'invalid granularity {granularity!r} for {owner}; choose from '
                           f'{sorted(settings)} or give a dict with keys {list(positions)}')
        granularity = settings[granularity]
    if not isinstance(granularity, Mapping):
        raise TypeError(f'granularity of {owner} must be a name or a dict, '
                        f'got {type(granularity).__name__}')
    missing = [p for p in positions if p not in granularity]
    unknown = [p for p in granularity if p not in positions]
    if missing or unknown:
        raise ValueError(f'granularity of {owner} needs exactly the positions {list(positions)} '
                         f'(filters per gate); missing {missing}, unknown {unknown}')
    out = [{} for _ in range(num_stages)]
    for pos in positions:
        value = granularity[pos]
        per_stage = [value] * num_stages if isinstance(value, int) else list(value)
        if len(per_stage) < num_stages or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in per_stage):
            raise ValueError(f'granularity[{pos!r}] of {owner} must be an integer >= 1 or one '
                             f'per stage ({num_stages} stages), got {value!r}')
        for stage, v in zip(out, per_stage):
            stage[pos] = v
    return out


class _AttachGateLoss(torch.autograd.Function):
    """Identity on the backbone's output whose backward also feeds ``d(total)/d(loss) = scale``
    into the gate loss, so the gate loss trains through whatever task loss consumes the
    output, with no change to mmpretrain classifiers, mmseg segmentors or mmdet detectors."""

    @staticmethod
    def forward(ctx, out, loss, scale):
        ctx.scale = scale
        ctx.loss_shape = loss.shape
        # A copy, not a view: downstream code may modify backbone outputs in place.
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, grad.new_full(ctx.loss_shape, ctx.scale), None


class GatedBackboneMixin:
    """Put before a backbone base (:mod:`~mmmod.models.backbones.base`) whose blocks are gated.

    Subclasses call :meth:`_init_gating` at the end of ``__init__``. In training with a
    ``gate_loss`` the loss is attached to the LAST output (see :class:`_AttachGateLoss`): the task
    loss must depend on the last output (true for the classifiers, FCN / UPerNet decode heads
    and FPN necks of the three libraries). ``gate_loss_grad_scale`` is set by a hook from an AMP
    loss scaler.
    """

    # (no class-level ``gate_loss = None``: it would shadow the registered sub-module)
    gate_loss_grad_scale: float = 1.0

    def _init_gating(self, gate_loss: Optional[Union[dict, torch.nn.Module]], gate_mode: str,
                     gate_tau: float) -> None:
        if isinstance(gate_loss, dict):
            gate_loss = MODELS.build(gate_loss)
        elif gate_loss is not None and not isinstance(gate_loss, torch.nn.Module):
            raise TypeError(f'gate_loss must be a config dict, a module or None, '
                            f'got {type(gate_loss).__name__}')
        self.gate_loss = gate_loss
        self._last_gate_loss: Optional[float] = None
        self.set_gate_mode(gate_mode, gate_tau)

    @property
    def num_gates(self) -> int:
        """|G|: learned gates of the whole backbone (always-on groups excluded)."""
        return sum(block.num_learned_gates for _, block in iter_gated_blocks(self))

    def set_gate_mode(self, mode: str, tau: Optional[float] = None) -> None:
        """Inference mode of every gate: one of ``GATE_MODES``; ``tau`` for 'threshold'.
        Training always samples."""
        tau = getattr(self, 'gate_tau', 0.5) if tau is None else tau
        check_gate_mode(mode, tau)
        self.gate_mode, self.gate_tau = mode, tau
        for _, block in iter_gated_blocks(self):
            block.set_gate_mode(mode, tau)

    def gate_records(self) -> List[GateRecord]:
        """One :class:`GateRecord` per gated block, from the last forward."""
        return [block.gate_record() for _, block in iter_gated_blocks(self)]

    def forward(self, x: torch.Tensor):
        outs = super().forward(x)
        if self.training and self.gate_loss is not None:
            loss = self.gate_loss(self.gate_records())
            self._last_gate_loss = float(loss.detach())
            last = _AttachGateLoss.apply(outs[-1], loss, float(self.gate_loss_grad_scale))
            outs = (*outs[:-1], last)
        else:
            self._last_gate_loss = None
        return outs

    @property
    def gate_stats(self) -> Dict[str, float]:
        """Statistics of the last forward (python floats), empty before the first forward:
        ``gate_rate`` (mean Z over learned gates), ``gate_flops_ratio`` (batch mean of
        FLOPs(Z) / FLOPs(all on) of the gated blocks), ``gated_gflops`` (expected conv GMACs of
        the gated blocks per image), ``gate_net_gflops`` (gate heads, per image), and
        ``gate_loss`` (training with a loss only)."""
        blocks = [b for _, b in iter_gated_blocks(self)]
        if not blocks or not blocks[0].last_gates:
            return {}
        with torch.no_grad():
            records = self.gate_records()
            z = torch.cat([r.z for r in records], 1)  # (N, G)
            flops = torch.stack([r.flops for r in records]).sum(0).mean()  # (blocks, N) -> ()
            full = sum(r.full_flops for r in records)
            stats = dict(
                gate_rate=float(z.mean()) if z.numel() else 1.0,
                gate_flops_ratio=float(flops) / full,
                gated_gflops=float(flops) / 1e9,
                gate_net_gflops=sum(r.gate_flops for r in records) / 1e9)
        if self._last_gate_loss is not None:
            stats['gate_loss'] = self._last_gate_loss
        return stats
