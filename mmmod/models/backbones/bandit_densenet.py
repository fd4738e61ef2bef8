"""DenseNet trained by dynamic channel execution (Spasov & Lio, Alg. 1; Table 1's DenseNet-121):
a CUCB bandit picks the channels each training step runs.

No residual add ties a DenseNet width, so every conv's output channels are arms: the stem
conv, each dense layer's 1x1 (``bn_size * growth``) and 3x3 (``growth``) convs, each
transition conv (DenseNet-121: 120 layers of arms, 10240 channels). DenseNet is
pre-activation (BN-ReLU-conv): a zeroed conv output does not remove a channel (its reader's
BN maps 0 to beta), so a channel is removed at every reader's input *after* that reader's
BN-ReLU (:attr:`~mmmod.models.layers.channel_structure.ConvStep.pre_act`)::

    x -> stem conv-bn-relu -> maxpool -> [stem]                                 (N, 64, H/4, W/4)
    dense layer: cat(xs) -> bn1-relu -> [input] -> conv1 -> bn2-relu -> [conv1] -> conv2 -> (cat)
    transition:  x -> bn-relu -> [input] -> conv -> avgpool                     (next block input)
    final:       x -> bn-relu -> [input] -> backbone output (full width, 0 at removed channels)

A layer's ``[input]`` is the concatenation of its block input and all earlier layers' conv2
outputs: an arm's channels sit at an offset of several readers' inputs. Each step the arm has
one mask, shared by all its readers (``masked``: multiplied in after each reader's BN-ReLU),
so its saliency (Eq. 2) is the gradient of the loss w.r.t. that mask: the readers' raw
saliencies at its offsets, summed. ``execution='thin'`` computes the active sub-network only:
the concatenated stream carries the active channels, each reader's BN runs on the channels it
reads (:func:`~mmmod.models.layers.channel_bandit.thin_norm`), convs run their full weights
gathered at the active rows and columns. The backbone output keeps the full width (zeros at
the removed channels), so the head (``LinearClsHead(1024, ...)``) and its checkpoint entries
stay as they are through the export. In eval the network runs the fixed topology by mean
saliency (Alg. 1 step 12); ``tools/export_pruned.py`` writes it as a
:class:`~mmmod.models.backbones.PrunedDenseNet`.
"""
from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.models.backbones.densenet import DenseLayer, DenseNet, DenseTransition

from mmmod.registry import MODELS
from ..layers.channel_bandit import EXECUTIONS, BanditStep, thin_norm
from ..layers.channel_structure import (DENSE_LAYER, DENSE_TRANSITION, gathered_conv,
                                        position_widths, scatter_channels, walk)
from ._bandit_utils import Arm, BanditBackboneMixin, BanditBlockMixin

STEM = 'stem'
#: (site, position, width) of the arm layers a reader's input concatenates, in channel order
Source = Tuple[str, str, int]


def refuse_memory_efficient(kwargs: dict, what: str, why: str) -> None:
    """DenseNet's ``memory_efficient`` (checkpointing) is not supported by ``what``."""
    if kwargs.get('memory_efficient'):
        raise ValueError(f'{what} does not support memory_efficient=True (checkpointing): '
                         f'{why}; set memory_efficient=False')


def stream_layout(net: DenseNet) -> Dict[str, List[Source]]:
    """What each reader of a (full-width) DenseNet reads: reader site (every dense layer, every
    transition, ``transitions.<last>`` for the final norm) -> the arm layers its input
    concatenates, in channel order.

    Example:
        >>> net = DenseNet(dict(growth_rate=4, depths=[2, 1], init_channels=8))
        >>> layout = stream_layout(net)
        >>> layout['stages.0.block.1']
        [('stem', 'stem', 8), ('stages.0.block.0', 'conv2', 4)]
        >>> layout['transitions.1']
        [('transitions.0', 'conv', 8), ('stages.1.block.0', 'conv2', 4)]
    """
    layout, block_input = {}, [(STEM, STEM, net.init_channels)]
    for i, stage in enumerate(net.stages):
        features = list(block_input)
        for j, layer in enumerate(stage.block):
            site = f'stages.{i}.block.{j}'
            layout[site] = list(features)
            features.append((site, 'conv2', layer.conv2.out_channels))
        layout[f'transitions.{i}'] = features
        if i < net.num_stages - 1:
            block_input = [(f'transitions.{i}', 'conv', net.transitions[i].conv.out_channels)]
    return layout


def dense_layers(net: DenseNet):
    """(site, module) of every dense layer, then its stage's transition (the last stage's
    final norm excluded), in forward order."""
    for i, stage in enumerate(net.stages):
        for j, layer in enumerate(stage.block):
            yield f'stages.{i}.block.{j}', layer
        if i < net.num_stages - 1:
            yield f'transitions.{i}', net.transitions[i]


def replace_dense_layers(net: DenseNet, layer_type: type, transition_type: type,
                         norm_cfg: dict, act_cfg: dict, drop_rate: float,
                         per_site: Optional[Mapping[str, dict]] = None) -> None:
    """Rebuild every dense layer and transition of ``net`` as ``layer_type`` /
    ``transition_type`` (upstream's arguments, same names, so the state dict keeps upstream's
    keys), each also given its site (``name``) and ``per_site[site]``'s keyword arguments."""
    for site, module in list(dense_layers(net)):
        extra = {} if per_site is None else per_site[site]
        if isinstance(module, DenseLayer):
            growth = module.conv2.out_channels
            new = layer_type(module.conv1.in_channels, growth, module.conv1.out_channels //
                             growth, norm_cfg, act_cfg, drop_rate, name=site, **extra)
        else:
            new = transition_type(module.conv.in_channels, module.conv.out_channels, norm_cfg,
                                  act_cfg, name=site, **extra)
        parent, _, leaf = site.rpartition('.')
        net.get_submodule(parent)[int(leaf)] = new


class BanditDenseLayer(BanditBlockMixin, DenseLayer):
    """mmpretrain's DenseLayer on the bandit's channels (arms: conv1, conv2)."""

    def __init__(self, *args, name: str = '', **kwargs):
        super().__init__(*args, **kwargs)
        self.channel_structure = DENSE_LAYER
        self._init_bandit_block()

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        """xs: the block input and earlier outputs, (N, C_i, H, W) each (thin: their active
        channels) -> (N, growth, H, W) (thin: its active channels)."""
        out = walk(self, torch.cat(xs, 1), self.bandit_part, self.bandit_step)
        return F.dropout(out, self.drop_rate, self.training) if self.drop_rate > 0 else out


class BanditDenseTransition(BanditBlockMixin, DenseTransition):
    """mmpretrain's DenseTransition on the bandit's channels (arm: conv)."""

    def __init__(self, *args, name: str = '', **kwargs):
        super().__init__(*args, **kwargs)
        self.channel_structure = DENSE_TRANSITION
        self._init_bandit_block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H / 2, W / 2) (thin: active channels only)."""
        return self.pool(walk(self, x, self.bandit_part, self.bandit_step))


@MODELS.register_module()
class BanditDenseNet(BanditBackboneMixin, DenseNet):
    """DenseNet whose channels a CUCB bandit selects at every training step.

    Args:
        arch (str | dict): as mmpretrain's ``DenseNet`` (``'121'``, or a dict with
            ``growth_rate``, ``depths``, ``init_channels``).
        ratio (float): p, the fraction of all arms active per step, in (0, 1].
        execution (str): ``'thin'`` (the active sub-network only, default) or ``'masked'``
            (the paper: inactive channels multiplied by 0, after each reader's BN-ReLU).
        freeze_inactive (bool): the hook leaves everything of the inactive channels as it was
            (weights, the readers' BN affine and running statistics, optimizer state).
            Default True.
        init (str): ``'untried'`` or ``'per_arm'`` (see :class:`ChannelBandit`).
        seed (int): the bandit's tie-breaking seed (shared by all ranks).
        **kwargs: as mmpretrain's ``DenseNet`` (``memory_efficient`` is refused).

    Shapes:
        x: (N, in_channels, H, W) -> tuple of (N, C_i, H / s_i, W / s_i) for i in out_indices,
        full width (zeros at the inactive channels).

    Example:
        >>> model = BanditDenseNet(ratio=0.4)
        >>> len(model.arms), model.bandit.num_arms, model.bandit.num_active
        (120, 10240, 4096)
        >>> tiny = BanditDenseNet(dict(growth_rate=4, depths=[2, 2], init_channels=8), 0.5)
        >>> _ = tiny.begin_bandit_step()
        >>> out = tiny(torch.rand(2, 3, 32, 32))
        >>> out[-1].sum().backward(); tiny.end_bandit_step()
        >>> tuple(out[-1].shape), int(tiny.bandit.step)
        ((2, 16, 4, 4), 1)
    """

    pruned_type = 'PrunedDenseNet'  # the compact export (tools/export_pruned.py)
    baseline_type = 'mmpretrain.DenseNet'  # the full-width network it explores

    def __init__(self, arch='121', ratio: float = 0.5, execution: str = 'thin',
                 freeze_inactive: bool = True, init: str = 'untried', seed: int = 0,
                 **kwargs):
        refuse_memory_efficient(kwargs, 'dynamic channel execution',
                                'a recomputed forward would record the saliencies twice')
        super().__init__(arch, **kwargs)
        replace_dense_layers(self, BanditDenseLayer, BanditDenseTransition,
                             kwargs.get('norm_cfg', dict(type='BN')),
                             kwargs.get('act_cfg', dict(type='ReLU')), kwargs.get('drop_rate', 0))
        self._freeze_stages()  # the rebuilt layers follow frozen_stages too
        self._layout = stream_layout(self)
        self._final_site = f'transitions.{self.num_stages - 1}'
        arms, self._readers = self._find_arms()
        self._init_bandit(arms, ratio, execution, freeze_inactive, init, seed)

    def bandit_blocks(self):
        return dense_layers(self)

    def stage_of(self, site: str) -> str:
        """``'stages.1.block.3'`` and ``'transitions.1'`` -> ``'stage2'``; ``'stem'``."""
        return site if site == STEM else f'stage{int(site.split(".")[1]) + 1}'

    def _reader_parts(self, site: str) -> Tuple[nn.Module, nn.Module]:
        """(conv, norm) that read a reader site's input (the final norm: no conv)."""
        if site == self._final_site:
            return None, self.transitions[-1][0]
        block = self.get_submodule(site)
        step = block.channel_structure.branch[0]
        return step.conv_of(block), step.norm_of(block)

    def _find_arms(self):
        """The arms, in forward order, and per arm its readers ``(site, position, offset)``:
        the inputs where its mask is multiplied in and its saliency recorded."""
        producers = {(STEM, STEM): (self.stem[0], self.stem[1])}
        order = [(STEM, STEM)]
        consumers, readers = defaultdict(list), defaultdict(list)
        for site, block in self.bandit_blocks():
            s = block.channel_structure
            for step in s.branch:
                producers[(site, step.writes)] = (step.conv_of(block), None)
                order.append((site, step.writes))
                if step.reads != 'input':  # conv1, read by the same layer's conv2 step
                    consumers[(site, step.reads)].append((step.conv_of(block),
                                                          step.norm_of(block), 0))
                    readers[(site, step.reads)].append((site, step.reads, 0))
        for site, sources in self._layout.items():
            conv, norm = self._reader_parts(site)
            offset = 0
            for src_site, pos, width in sources:
                consumers[(src_site, pos)].append((conv, norm, offset))
                readers[(src_site, pos)].append((site, 'input', offset))
                offset += width
        arms = [Arm(site, pos, producers[(site, pos)][0].out_channels,
                    (producers[(site, pos)], ), tuple(consumers[(site, pos)]))
                for site, pos in order]
        return arms, [tuple(readers[(a.site, a.position)]) for a in arms]

    # --- one step's masks at the sites -------------------------------------------------------
    def _assign(self, masks: List[torch.Tensor], record: bool) -> None:
        """Each site gets its arms' masks and, at every reader, the mask of its input: the
        concatenation of its sources' (one mask per arm, shared by all readers)."""
        device = self.bandit.counts.device
        arm_masks = {(arm.site, arm.position): m.to(device)
                     for arm, m in zip(self.arms, masks)}
        per_site = defaultdict(dict)
        for (site, pos), mask in arm_masks.items():
            per_site[site][pos] = mask
        for site, sources in self._layout.items():
            per_site[site]['input'] = torch.cat(
                [arm_masks[(s, p)] for s, p, _ in sources])  # (C_in,) in channel order
        recorded = {(site, pos) for rs in self._readers for site, pos, _ in rs}
        self._steps = {
            site: BanditStep(ms, {pos: torch.zeros(m.numel(), dtype=torch.float64,
                                                   device=device)
                                  for pos, m in ms.items() if (site, pos) in recorded}
                             if record else None)
            for site, ms in per_site.items()
        }
        part = EXECUTIONS[self.execution]
        for name, block in self.bandit_blocks():
            block.bandit_part = part
            block.bandit_step = self._steps[name]

    def step_saliencies(self) -> List[torch.Tensor]:
        """Per arm layer (C,): the raw saliencies its readers recorded at its offsets, summed
        (Eq. 2 of the one mask all of them multiply in)."""
        out = []
        for arm, readers in zip(self.arms, self._readers):
            out.append(sum(self._steps[site].saliency[pos][offset:offset + arm.width]
                           for site, pos, offset in readers))  # (C_in,) -> (C,) each
        return out

    def pruned_channel_cfg(self, masks: List[torch.Tensor]) -> dict:
        """The ``channel_cfg`` of :class:`~mmmod.models.backbones.PrunedDenseNet` keeping the
        channels of ``masks``: the kept filters of the stem and of every dense layer's and
        transition's convs (what each reader keeps of its input follows from them).

        Example:
            >>> model = BanditDenseNet(dict(growth_rate=4, depths=[2, 2], init_channels=8))
            >>> cfg = model.pruned_channel_cfg(model.fixed_masks('random'))
            >>> sorted(cfg['blocks']), sorted(cfg['blocks']['stages.0.block.0'])
            (['stages.0.block.0', 'stages.0.block.1', 'stages.1.block.0', \
'stages.1.block.1', 'transitions.0'], ['conv1', 'conv2'])
        """
        kept = {(arm.site, arm.position): mask.nonzero().flatten().tolist()
                for arm, mask in zip(self.arms, masks)}
        blocks = {site: {pos: kept[(site, pos)] for pos in position_widths(block)
                         if pos != 'input'}
                  for site, block in self.bandit_blocks()}
        arch = dict(growth_rate=self.growth_rate, depths=list(self.depths),
                    init_channels=self.init_channels)
        return dict(arch=arch, stem=kept[(STEM, STEM)], blocks=blocks)

    # --- forward -------------------------------------------------------------------------
    def _thin(self, site: str, pos: str):
        """Active indices (k,) of a position in thin execution; None when masked."""
        return self._steps[site].get(pos) if self.execution == 'thin' else None

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C_stem or k, H / 4, W / 4); its channels are decided at its
        readers (masked: all computed)."""
        conv, norm, act, pool = self.stem
        index = self._thin(STEM, STEM)
        x = gathered_conv(x, conv, conv.weight, conv.bias, index, None)  # (N, k, H/2, W/2)
        return pool(act(thin_norm(norm, x, index)))

    def _full(self, x: torch.Tensor, site: str, pos: str) -> torch.Tensor:
        """A stage output at full width, zeros at the inactive channels of (site, pos)."""
        step = self._steps[site]
        if self.execution == 'masked':
            return x * step.scale[pos].to(x)[None, :, None, None]  # (N, C, H, W) * (1, C, 1, 1)
        index = step.get(pos)
        return scatter_channels(x, index, step.masks[pos].numel())  # (N, k, ..) -> (N, C, ..)

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        """The last norm-act, the backbone output: (N, C or k, H, W) -> (N, C, H, W)."""
        norm, act = self.transitions[-1]
        site = self._final_site
        out = act(thin_norm(norm, x, self._thin(site, 'input')))
        out = EXECUTIONS[self.execution].at(None, 'input', out, self._steps[site])
        return out if self.execution == 'masked' else self._full(out, site, 'input')

    def forward(self, x: torch.Tensor):
        self._check_bandit_step()
        x = self._stem(x)
        outs = []
        for i in range(self.num_stages):
            x = self.stages[i](x)  # upstream's DenseBlock: the layers' outputs concatenated
            if i == self.num_stages - 1:
                x = self._final(x)
                if i in self.out_indices:
                    outs.append(x)
                continue
            x = self.transitions[i](x)
            if i in self.out_indices:
                outs.append(self._full(x, f'transitions.{i}', 'conv'))
        return tuple(outs)
