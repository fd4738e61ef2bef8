"""ResNet trained by dynamic channel execution (Spasov & Lio, Alg. 1): a CUCB bandit picks the
channels each training step runs.

Arms are the output channels whose width no residual add ties (Sec. 3.4): the stem conv and,
in every block, the positions of its channel structure that are neither its input nor added
into the stream -- conv1 and conv2 of a Bottleneck, conv1 of a BasicBlock::

    x -> stem conv-bn-relu -> [stem] -> maxpool -> layer1 ...
    Bottleneck: x -+-> conv1-bn-relu -> [conv1] -> conv2-bn-relu -> [conv2] -> conv3-bn --+
                   +-> (downsample) -------------------------------------------------------> + -> relu

``arm_tied=True`` also makes conv3 and the projection shortcut arms: their active channels are
added into the full-width stream at their own indices. Each training step
(:class:`~mmmod.engine.hooks.ChannelBanditHook` drives it) the bandit selects the super-arm,
the blocks walk their structure with it (``execution='thin'``: only the active sub-network is
computed; ``'masked'``: the paper's zeroed outputs) and backward leaves the saliencies of the
active channels for the bandit. In eval the network runs the topology an export would take: the
top channels by mean saliency (Alg. 1 step 12).
"""
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck

from mmmod.registry import MODELS
from ..layers.channel_bandit import EXECUTIONS, BanditStep, ChannelBandit, thin_norm
from ..layers.channel_structure import (PLAIN, forward_block, gathered_conv, position_widths,
                                        structure_of)
from .base import ResNetBase, resnet_arch_settings

STEM = 'stem'


class _BanditBlock:
    """An upstream block whose forward walks its channel structure with the step's part
    (:class:`~mmmod.models.layers.channel_bandit.MaskedChannels` or ``ThinChannels``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.with_cp:
            raise ValueError('dynamic channel execution does not support with_cp: a recomputed '
                             'forward would record the saliencies twice')
        self.channel_structure = structure_of(self)
        self.bandit_part, self.bandit_step = PLAIN, BanditStep({})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_block(self, x, self.bandit_part, self.bandit_step)


class BanditBottleneck(_BanditBlock, Bottleneck):
    """mmpretrain's Bottleneck run on the bandit's channels (arms: conv1, conv2)."""


class BanditBasicBlock(_BanditBlock, BasicBlock):
    """mmpretrain's BasicBlock run on the bandit's channels (arm: conv1)."""


@MODELS.register_module()
class BanditResNet(ResNetBase):
    """ResNet whose channels a CUCB bandit selects at every training step.

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        ratio (float): p, the fraction of all arms active per step, in (0, 1].
        execution (str): ``'thin'`` (compute the active sub-network only, default) or
            ``'masked'`` (the paper: multiply inactive outputs by 0).
        freeze_inactive (bool): the hook leaves everything of the inactive channels as it was
            (weights, BN affine and running statistics, optimizer state): the active
            sub-network trains as a network of its own. False: the paper's literal masking
            (weight decay and momentum still move inactive weights). Default True.
        init (str): ``'untried'`` or ``'per_arm'`` (see :class:`ChannelBandit`).
        seed (int): the bandit's tie-breaking seed (shared by all ranks).
        arm_tied (bool): also make conv3 / shortcut outputs arms. Default False.
        **kwargs: as :class:`~mmmod.models.backbones.base.ResNetBase` (mmpretrain's
            ``ResNet``; ``with_cp`` is refused).

    Shapes:
        x: (N, in_channels, H, W) -> tuple of (N, C_i, H / s_i, W / s_i) for i in out_indices.

    Example:
        >>> model = BanditResNet(depth=50, ratio=0.3, out_indices=(3, ))
        >>> model.bandit.num_arms, model.bandit.num_active
        (7616, 2284)
        >>> _ = model.begin_bandit_step()
        >>> out = model(torch.rand(2, 3, 64, 64))
        >>> out[-1].sum().backward(); model.end_bandit_step()
        >>> tuple(out[-1].shape), int(model.bandit.step)
        ((2, 2048, 2, 2), 1)
    """

    arch_settings = resnet_arch_settings(dict(basic=BanditBasicBlock,
                                              bottleneck=BanditBottleneck))

    def __init__(self, depth: int, ratio: float = 0.5, execution: str = 'thin',
                 freeze_inactive: bool = True, init: str = 'untried', seed: int = 0,
                 arm_tied: bool = False, **kwargs):
        if execution not in EXECUTIONS:
            raise ValueError(f'execution must be one of {sorted(EXECUTIONS)}, got {execution!r}')
        super().__init__(depth, **kwargs)
        self.execution = execution
        self.freeze_inactive = freeze_inactive
        self.arms = self._find_arms(arm_tied)  # [(site, block or None, position, width)]
        self.bandit = ChannelBandit([arm[3] for arm in self.arms], ratio, init, seed)
        self._steps: Dict[str, BanditStep] = {}
        self._step_masks = None  # the running training step's masks, one per arm
        self._fixed_at = None  # bandit step of the eval topology in place

    # --- structure -----------------------------------------------------------------------
    def _blocks(self):
        for layer_name in self.res_layers:
            for i, block in enumerate(getattr(self, layer_name)):
                yield f'{layer_name}.{i}', block

    def _stem_parts(self) -> Tuple[tuple, nn.Conv2d, nn.Module, nn.Module]:
        """(layers before the last stem conv, the conv, its norm, its activation)."""
        if not self.deep_stem:
            return (), self.conv1, self.norm1, self.relu
        *pre, last = self.stem
        return tuple(pre), last.conv, last.norm, last.activate

    def _find_arms(self, arm_tied: bool) -> List[tuple]:
        arms = []
        # the stem's width is free where the first block projects its input (ResNet-50's
        # layer1.0); where the identity adds it to the stream (ResNet-18), it is tied
        if arm_tied or next(self._blocks())[1].channel_structure.shortcut is not None:
            arms.append((STEM, None, STEM, self._stem_parts()[1].out_channels))
        for name, block in self._blocks():
            s, widths = block.channel_structure, position_widths(block)
            for pos in s.positions:
                if pos == s.entry or (pos in s.added and not arm_tied):
                    continue  # the block input is the stream; added sets are tied to it
                arms.append((name, block, pos, widths[pos]))
        return arms

    def _producers_consumers(self, site, block, pos):
        """The (conv, norm) pairs writing an arm's channels and the convs reading them."""
        if site == STEM:
            first = next(self._blocks())[1]
            s = first.channel_structure
            readers = [st for st in s.steps if st.reads in (None, s.branch[0].reads)]
            return [self._stem_parts()[1:3]], [st.parts(first)[1] for st in readers]
        s = block.channel_structure
        producers = [st.parts(block)[1:3] for st in s.steps if st.writes == pos]
        consumers = [] if pos in s.added else \
            [st.parts(block)[1] for st in s.steps if st.reads == pos]
        return producers, consumers

    # --- selection -----------------------------------------------------------------------
    def _assign(self, masks: List[torch.Tensor], record: bool) -> None:
        device = self._stem_parts()[1].weight.device
        per_site = defaultdict(dict)
        for (site, _, pos, _), mask in zip(self.arms, masks):
            per_site[site][pos] = mask.to(device)
        self._steps = {
            site: BanditStep(ms, {pos: torch.zeros(m.numel(), dtype=torch.float64,
                                                   device=device) for pos, m in ms.items()}
                             if record else None)
            for site, ms in per_site.items()
        }
        part = EXECUTIONS[self.execution]
        for name, block in self._blocks():
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
        return [self._steps[site].saliency[pos] for site, _, pos, _ in self.arms]

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
        """Active fraction per stage (and of the stem), the exploration bonus range and the
        number of arms never tried, for the training log."""
        active, total = defaultdict(int), defaultdict(int)
        for (site, _, _, width), mask in zip(self.arms, masks):
            stage = site.split('.')[0]
            active[stage] += int(mask.sum())
            total[stage] += width
        log = {f'active_{stage}': active[stage] / total[stage] for stage in total}
        bonus = (self.bandit.ucb() - self.bandit.means)[self.bandit.counts > 0]
        if bonus.numel():
            log.update(bonus_min=float(bonus.min()), bonus_max=float(bonus.max()))
        log['untried'] = float(self.bandit.untried)
        return log

    def fixed_masks(self, by: str = 'mean') -> List[torch.Tensor]:
        """The final topology (Alg. 1 step 12), one (C,) bool mask per arm layer."""
        return self.bandit.select_fixed(by)

    def frozen_entries(self, masks: List[torch.Tensor]) -> Dict[int, Tuple[torch.Tensor,
                                                                           torch.Tensor]]:
        """What a step with ``masks`` must leave unchanged: id -> (tensor, bool mask of its
        entries) for the filters (rows) and input channels (columns) of inactive channels,
        with the norms' affine parameters and running statistics."""
        frozen = {}

        def add(t, inactive, dim):
            if t is None:
                return
            shape = [1] * t.dim()
            shape[dim] = -1
            entry = frozen.setdefault(id(t), (t, torch.zeros_like(t, dtype=torch.bool)))
            entry[1].logical_or_(inactive.to(t.device).view(shape))  # broadcast over the rest

        for (site, block, pos, _), mask in zip(self.arms, masks):
            inactive = ~mask
            producers, consumers = self._producers_consumers(site, block, pos)
            for conv, norm in producers:
                add(conv.weight, inactive, 0)
                add(conv.bias, inactive, 0)
                for name in ('weight', 'bias', 'running_mean', 'running_var'):
                    add(getattr(norm, name, None), inactive, 0)
            for conv in consumers:
                add(conv.weight, inactive, 1)
        return frozen

    # --- forward -------------------------------------------------------------------------
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

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        pre, conv, norm, act = self._stem_parts()
        for layer in pre:
            x = layer(x)
        step = self._steps.get(STEM)
        if step is None:  # the stem is no arm
            return act(norm(conv(x)))
        if self.execution == 'masked':
            x = act(norm(conv(x)))
            return EXECUTIONS['masked'].at(None, STEM, x, step)
        index = step.get(STEM)
        out = act(thin_norm(norm, gathered_conv(x, conv, conv.weight, conv.bias, index, None),
                            index))  # (N, k, H, W)
        step.record(STEM, out, thin=True)
        # the first block's shortcut reads the stream at full width: inactive channels are 0
        full = out.new_zeros(out.shape[0], conv.out_channels, *out.shape[2:])
        return full.index_copy(1, index, out)  # (N, k, H, W) -> (N, C, H, W)

    def forward(self, x: torch.Tensor):
        if self.training and self._step_masks is None:
            raise RuntimeError(
                'BanditResNet trains under ChannelBanditHook, which selects each step\'s '
                "channels: add custom_hooks=[dict(type='ChannelBanditHook')] to the config (or "
                'call begin_bandit_step() / end_bandit_step() around each step)')
        if not self.training:
            self._use_fixed()
        x = self.maxpool(self._stem(x))
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = getattr(self, layer_name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
