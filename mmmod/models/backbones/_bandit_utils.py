"""What every backbone trained by dynamic channel execution shares (BanditResNet, BanditVGG,
BanditDenseNet): its arms, one step's selection handed to the blocks, the observation after
backward, the entries a step must leave alone, the fixed eval topology and its compact export.

A host supplies its arms (:class:`Arm`: where the channels sit, which convs and norms write
them and which convs read them) and the blocks that walk their channel structure with the
step's part (:class:`BanditBlockMixin`); the rest is here, once.
"""
from collections import defaultdict
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..layers.channel_bandit import EXECUTIONS, BanditStep, ChannelBandit
from ..layers.channel_structure import PLAIN, forward_block


class Arm(NamedTuple):
    """One layer of arms: the channels of one position of one site.

    Args:
        site (str): the block (state-dict prefix, e.g. ``'layer1.0'``) or the host's own part
            (``'stem'``) whose :class:`BanditStep` carries the mask.
        position (str): the channel position in the site's structure (``'conv1'``).
        width (int): its channels, the arms of this layer.
        producers (tuple): ``(conv, norm)`` pairs that write the channels (norm may be None).
        consumers (tuple): ``(conv, norm, offset)`` that read them: the conv's input
            columns (None: a norm read by no conv) and, in pre-activation hosts (DenseNet),
            the norm in front of it (None otherwise), the channels starting at ``offset`` of
            what they read (0 but where a dense layer reads a concatenation).
    """

    site: str
    position: str
    width: int
    producers: Tuple[tuple, ...]
    consumers: Tuple[tuple, ...]


class BanditBlockMixin:
    """An upstream block whose forward walks its channel structure with the step's part
    (:class:`~mmmod.models.layers.channel_bandit.MaskedChannels` or ``ThinChannels``); put it
    before the upstream class. The block's ``channel_structure`` is set by the host's block
    (``structure_of(self)`` for the upstream blocks described there)."""

    bandit_part = PLAIN

    def _init_bandit_block(self) -> None:
        if getattr(self, 'with_cp', False):
            raise ValueError('dynamic channel execution does not support with_cp: a recomputed '
                             'forward would record the saliencies twice')
        self.bandit_step = BanditStep({})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H', W') on the step's channels."""
        return forward_block(self, x, self.bandit_part, self.bandit_step)


class BanditBackboneMixin:
    """The bandit's side of a host backbone; put it before the host's base class.

    The host calls :meth:`_init_bandit` at the end of ``__init__`` with its arms and supplies
    :meth:`bandit_blocks` (site name -> block walking a bandit part) and, for the export,
    :meth:`pruned_channel_cfg`. ``self._steps`` holds the running step's
    :class:`BanditStep` per site, for the host's own sites (a stem) to read.
    """

    #: registered type of the compact network the export writes
    pruned_type: str = ''

    def _init_bandit(self, arms: Sequence[Arm], ratio: float, execution: str,
                     freeze_inactive: bool, init: str, seed: int) -> None:
        if execution not in EXECUTIONS:
            raise ValueError(f'execution must be one of {sorted(EXECUTIONS)}, got {execution!r}')
        if not arms:
            raise ValueError(f'{type(self).__name__} has no arms: every channel width of this '
                             f'configuration is tied by a residual add')
        self.execution = execution
        self.freeze_inactive = freeze_inactive
        self.arms = list(arms)
        self.bandit = ChannelBandit([arm.width for arm in self.arms], ratio, init, seed)
        self._steps: Dict[str, BanditStep] = {}
        self._step_masks = None  # the running training step's masks, one per arm
        self._fixed_at = None  # bandit step of the eval topology in place

    def bandit_blocks(self) -> Iterable[Tuple[str, nn.Module]]:
        """(site name, block) of every block that walks the step's part."""
        raise NotImplementedError

    def stage_of(self, site: str) -> str:
        """The group a site's arms are logged under (``'layer1.0'`` -> ``'layer1'``)."""
        return site.split('.')[0]

    # --- selection -----------------------------------------------------------------------
    def _assign(self, masks: List[torch.Tensor], record: bool) -> None:
        device = self.bandit.counts.device
        per_site = defaultdict(dict)
        for arm, mask in zip(self.arms, masks):
            per_site[arm.site][arm.position] = mask.to(device)
        self._steps = {
            site: BanditStep(ms, {pos: torch.zeros(m.numel(), dtype=torch.float64,
                                                   device=device) for pos, m in ms.items()}
                             if record else None)
            for site, ms in per_site.items()
        }
        part = EXECUTIONS[self.execution]
        for name, block in self.bandit_blocks():
            block.bandit_part = part
            block.bandit_step = self._steps.get(name, BanditStep({}))

    def begin_bandit_step(self, masks: Optional[List[torch.Tensor]] = None
                          ) -> List[torch.Tensor]:
        """Select this training step's channels (Alg. 1 steps 7-9), or run the given ``masks``
        (a fixed topology: nothing is observed); returns one (C,) bool mask per arm layer."""
        observe = masks is None
        self._step_masks = self.bandit.select() if observe else masks
        self._assign(self._step_masks, record=observe)
        self._fixed_at = None
        return self._step_masks

    def step_saliencies(self) -> List[torch.Tensor]:
        """The raw saliencies (C,) per arm layer that backward left (signed, not yet summed
        over ranks)."""
        return [self._steps[arm.site].saliency[arm.position] for arm in self.arms]

    def end_bandit_step(self, saliencies: Optional[List[torch.Tensor]] = None,
                        observe: bool = True) -> None:
        """Observe the step (Alg. 1 step 11) from ``saliencies`` (default: this rank's);
        ``observe=False`` ends a fixed-topology step."""
        if self._step_masks is None:
            raise RuntimeError('end_bandit_step() without begin_bandit_step()')
        if observe:
            raw = self.step_saliencies() if saliencies is None else saliencies
            self.bandit.update(raw, self._step_masks)
        self._step_masks = None

    def bandit_log(self, masks: List[torch.Tensor]) -> Dict[str, float]:
        """Active fraction per stage, the exploration bonus range and the number of arms
        never tried, for the training log."""
        active, total = defaultdict(int), defaultdict(int)
        for arm, mask in zip(self.arms, masks):
            stage = self.stage_of(arm.site)
            active[stage] += int(mask.sum())
            total[stage] += arm.width
        log = {f'active_{stage}': active[stage] / total[stage] for stage in total}
        bonus = (self.bandit.ucb() - self.bandit.means)[self.bandit.counts > 0]
        if bonus.numel():
            log.update(bonus_min=float(bonus.min()), bonus_max=float(bonus.max()))
        log['untried'] = float(self.bandit.untried)
        return log

    def fixed_masks(self, by: str = 'mean') -> List[torch.Tensor]:
        """The final topology (Alg. 1 step 12), one (C,) bool mask per arm layer: by mean
        saliency, or ``'random'`` (Fig. 3's baseline)."""
        return self.bandit.select_fixed(by)

    def frozen_entries(self, masks: List[torch.Tensor]) -> Dict[int, Tuple[torch.Tensor,
                                                                           torch.Tensor]]:
        """What a step with ``masks`` must leave unchanged: id -> (tensor, bool mask of its
        entries) for the filters (rows) and input channels (columns) of inactive channels,
        with the norms' affine parameters and running statistics."""
        frozen = {}

        def add(t, inactive, dim, offset=0):
            if t is None:
                return
            shape = [1] * t.dim()
            shape[dim] = -1
            entry = frozen.setdefault(id(t), (t, torch.zeros_like(t, dtype=torch.bool)))
            view = entry[1].narrow(dim, offset, inactive.numel())
            view.logical_or_(inactive.to(t.device).view(shape))  # broadcast over the rest

        def add_norm(norm, inactive, offset=0):
            for name in ('weight', 'bias', 'running_mean', 'running_var'):
                add(getattr(norm, name, None), inactive, 0, offset)

        for arm, mask in zip(self.arms, masks):
            inactive = ~mask
            for conv, norm in arm.producers:
                add(conv.weight, inactive, 0)
                add(conv.bias, inactive, 0)
                if norm is not None:
                    add_norm(norm, inactive)
            for consumer in arm.consumers:
                conv, norm, offset = consumer
                if conv is not None:  # None: a norm read by no conv (DenseNet's last one)
                    add(conv.weight, inactive, 1, offset)
                if norm is not None:
                    add_norm(norm, inactive, offset)
        return frozen

    def pruned_channel_cfg(self, masks: List[torch.Tensor]) -> dict:
        """The ``channel_cfg`` of the compact network (:attr:`pruned_type`) keeping the
        channels of ``masks`` (one (C,) bool mask per arm layer)."""
        raise NotImplementedError

    # --- train / eval ----------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:
            self._use_fixed()
        return self

    def _use_fixed(self) -> None:
        if self._fixed_at != int(self.bandit.step):
            self._assign(self.fixed_masks(), record=False)
            self._fixed_at = int(self.bandit.step)

    def _apply(self, fn, *args, **kwargs):
        # the masks of the eval topology live on the old device / dtype: rebuilt on next use
        self._fixed_at = None
        return super()._apply(fn, *args, **kwargs)

    def _check_bandit_step(self) -> None:
        """Called first in the host's forward: training runs under the hook's selection, eval
        runs the fixed topology."""
        if self.training and self._step_masks is None:
            raise RuntimeError(
                f'{type(self).__name__} trains under ChannelBanditHook, which selects each '
                "step's channels: add custom_hooks=[dict(type='ChannelBanditHook')] to the "
                'config (or call begin_bandit_step() / end_bandit_step() around each step)')
        if not self.training:
            self._use_fixed()
