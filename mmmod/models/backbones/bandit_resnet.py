"""ResNet trained by dynamic channel execution (Spasov & Lio, Alg. 1): a CUCB bandit picks the
channels each training step runs.

Arms are the output channels whose width no residual add ties (Sec. 3.4): the stem conv and,
in every block, the positions of its channel structure that are neither its input nor added
into the stream -- conv1 and conv2 of a Bottleneck, conv1 of a BasicBlock::

    x -> stem conv-bn-relu -> [stem] -> maxpool -> layer1 ...
    Bottleneck: x -+-> conv1-bn-relu -> [conv1] -> conv2-bn-relu -> [conv2] -> conv3-bn --+
                   +-> (downsample) ----------------------------------------------------> + -> relu

``arm_tied=True`` also makes conv3 and the projection shortcut arms: their active channels are
added into the full-width stream at their own indices. Each training step
(:class:`~mmmod.engine.hooks.ChannelBanditHook` drives it) the bandit selects the super-arm,
the blocks walk their structure with it (``execution='thin'``: only the active sub-network is
computed; ``'masked'``: the paper's zeroed outputs) and backward leaves the saliencies of the
active channels for the bandit. In eval the network runs the topology an export would take: the
top channels by mean saliency (Alg. 1 step 12). ``tools/export_pruned.py`` writes that topology
as a :class:`~mmmod.models.backbones.PrunedResNet` (stem included) for fine-tuning.
"""
from typing import List

import torch
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck

from mmmod.registry import MODELS
from ..layers.channel_bandit import EXECUTIONS, thin_norm
from ..layers.channel_structure import (gathered_conv, position_widths, scatter_channels,
                                        structure_of)
from ._bandit_utils import Arm, BanditBackboneMixin, BanditBlockMixin
from .base import ResNetBase, resnet_arch_settings

STEM = 'stem'


class _BanditResBlock(BanditBlockMixin):

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel_structure = structure_of(self)
        self._init_bandit_block()


class BanditBottleneck(_BanditResBlock, Bottleneck):
    """mmpretrain's Bottleneck run on the bandit's channels (arms: conv1, conv2)."""


class BanditBasicBlock(_BanditResBlock, BasicBlock):
    """mmpretrain's BasicBlock run on the bandit's channels (arm: conv1)."""


@MODELS.register_module()
class BanditResNet(BanditBackboneMixin, ResNetBase):
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

    pruned_type = 'PrunedResNet'  # the compact export (tools/export_pruned.py)
    baseline_type = 'mmpretrain.ResNet'  # the full-width network it explores

    def __init__(self, depth: int, ratio: float = 0.5, execution: str = 'thin',
                 freeze_inactive: bool = True, init: str = 'untried', seed: int = 0,
                 arm_tied: bool = False, **kwargs):
        super().__init__(depth, **kwargs)
        self._init_bandit(self._find_arms(arm_tied), ratio, execution, freeze_inactive, init,
                          seed)

    def bandit_blocks(self):
        for layer_name in self.res_layers:
            for i, block in enumerate(getattr(self, layer_name)):
                yield f'{layer_name}.{i}', block

    def _stem_is_arm(self, arm_tied: bool) -> bool:
        # the stem's width is free where the first block projects its input (ResNet-50's
        # layer1.0); where the identity adds it to the stream (ResNet-18), it is tied
        return arm_tied or next(self.bandit_blocks())[1].channel_structure.shortcut is not None

    def _find_arms(self, arm_tied: bool) -> List[Arm]:
        arms = []
        if self._stem_is_arm(arm_tied):
            first = next(self.bandit_blocks())[1]
            s = first.channel_structure
            readers = [st.parts(first)[1] for st in s.steps if st.reads in (None, s.entry)]
            conv, norm = self.stem_parts()[1:3]
            arms.append(Arm(STEM, STEM, conv.out_channels, ((conv, norm), ),
                            tuple((r, None, 0) for r in readers)))
        for name, block in self.bandit_blocks():
            s, widths = block.channel_structure, position_widths(block)
            for pos in s.positions:
                if pos == s.entry or (pos in s.added and not arm_tied):
                    continue  # the block input is the stream; added sets are tied to it
                producers = tuple(st.parts(block)[1:3] for st in s.steps if st.writes == pos)
                consumers = () if pos in s.added else tuple(
                    (st.parts(block)[1], None, 0) for st in s.steps if st.reads == pos)
                arms.append(Arm(name, pos, widths[pos], producers, consumers))
        return arms

    def pruned_channel_cfg(self, masks: List[torch.Tensor]) -> dict:
        """The ``channel_cfg`` of :class:`~mmmod.models.backbones.PrunedResNet` keeping the
        channels of ``masks``: the arms' kept channels, every other position whole (the
        first block reads the stem's kept channels).

        Example:
            >>> model = BanditResNet(depth=50, ratio=0.3)
            >>> cfg = model.pruned_channel_cfg(model.fixed_masks())
            >>> len(cfg['stem']) <= 64, sorted(cfg['blocks']['layer1.0'])
            (True, ['conv1', 'conv2', 'conv3', 'downsample', 'input'])
        """
        kept = {(arm.site, arm.position): mask.nonzero().flatten().tolist()
                for arm, mask in zip(self.arms, masks)}
        cfg = dict(depth=self.depth, blocks={})
        if (STEM, STEM) in kept:
            cfg['stem'] = kept[(STEM, STEM)]
        for i, (name, block) in enumerate(self.bandit_blocks()):
            widths = position_widths(block)
            cfg['blocks'][name] = {pos: kept.get((name, pos), list(range(width)))
                                   for pos, width in widths.items()}
            if i == 0 and 'stem' in cfg:
                cfg['blocks'][name][block.channel_structure.entry] = cfg['stem']
        return cfg

    # --- forward -------------------------------------------------------------------------
    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        pre, conv, norm, act = self.stem_parts()
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
        return scatter_channels(out, index, conv.out_channels)  # (N, k, ..) -> (N, C, ..)

    def forward(self, x: torch.Tensor):
        self._check_bandit_step()
        x = self.maxpool(self._stem(x))
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = getattr(self, layer_name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
