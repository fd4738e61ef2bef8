"""VGG trained by dynamic channel execution (Spasov & Lio, Alg. 1; Sec. 3.2's VGG-19 "of type
VGG-E with a single FC layer", BN, no dropout): a CUCB bandit picks the channels each training
step runs.

VGG is a plain chain, so no add ties a width: every conv's output channels are arms (VGG-19:
16 layers, 5,504 arms; the paper's "20% = 1100 channels"). Each layer is mmpretrain's
ConvModule walking the ``VGG_LAYER`` description (one site per layer, its ``output`` position
the arm; its ``input`` is the previous layer's ``output``)::

    x -> [features.0] conv-bn-relu -> [features.1] conv-bn-relu -> pool -> ...  -> pool
         output: arms                  input = features.0's output

``execution='thin'`` runs the active sub-network only: each layer's conv gathers the filters
of its active outputs and the columns of the previous layer's active outputs, and hands the
slim (N, k, H, W) on; the returned features have VGG's width (zeros at the inactive
channels), so the plain ``GlobalAveragePooling + LinearClsHead(512)`` reads them.
``'masked'`` is the paper's implementation (inactive outputs times 0). With
``freeze_inactive`` (:class:`~mmmod.engine.hooks.ChannelBanditHook`) the inactive channels'
filters, BN entries and the next conv's input columns stay as they were; the head is outside
the backbone, so its FC columns of inactive last-layer channels (zero inputs, zero gradient)
still feel weight decay and momentum. In eval the network runs the topology an export would
take (the top arms by mean saliency, Alg. 1 step 12); ``tools/export_pruned.py`` writes it as
a :class:`~mmmod.models.backbones.PrunedVGG`.
"""
from typing import List

import torch
from mmcv.cnn import ConvModule
from mmpretrain.models.backbones.vgg import VGG

from mmmod.registry import MODELS
from ..layers.channel_bandit import THIN, BanditStep
from ..layers.channel_structure import VGG_LAYER
from ._bandit_utils import Arm, BanditBackboneMixin, BanditBlockMixin
from .pruned_vgg import VGGChainMixin, chain_layer_args

OUTPUT = VGG_LAYER.out  # a layer's arm position


class BanditVGGLayer(BanditBlockMixin, ConvModule):
    """mmpretrain's VGG ConvModule run on the bandit's channels (arm: its output)."""

    with_cp = False  # what forward_block asks; VGG layers are never checkpointed

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel_structure = VGG_LAYER
        self._init_bandit_block()


@MODELS.register_module()
class BanditVGG(BanditBackboneMixin, VGGChainMixin, VGG):
    """VGG whose conv channels a CUCB bandit selects at every training step.

    Args:
        depth (int): 11, 13, 16 or 19. Default 19.
        ratio (float): p, the fraction of all arms active per step, in (0, 1].
        execution (str): ``'thin'`` (compute the active sub-network only, default) or
            ``'masked'`` (the paper: multiply inactive outputs by 0).
        freeze_inactive (bool): the hook leaves everything of the inactive channels as it was
            (filters, BN affine and running statistics, the next conv's input columns,
            optimizer state). False: the paper's literal masking. Default True.
        init (str): ``'untried'`` or ``'per_arm'`` (see :class:`ChannelBandit`).
        seed (int): the bandit's tie-breaking seed (shared by all ranks).
        **kwargs: as mmpretrain's ``VGG`` (``num_classes=-1``; ``norm_cfg`` needed: conv ->
            BN -> ReLU layers).

    Shapes:
        x: (N, 3, H, W) -> tuple of (N, C_i, H / 2^(i+1), W / 2^(i+1)) for i in out_indices,
        C_i VGG's widths (zeros at inactive channels).

    Example:
        >>> model = BanditVGG(depth=19, ratio=0.2, norm_cfg=dict(type='BN'))
        >>> len(model.arms), model.bandit.num_arms, model.bandit.num_active
        (16, 5504, 1100)
        >>> _ = model.begin_bandit_step()
        >>> out = model(torch.rand(2, 3, 32, 32))
        >>> out[-1].sum().backward(); model.end_bandit_step()
        >>> tuple(out[-1].shape), int(model.bandit.step)
        ((2, 512, 1, 1), 1)
    """

    pruned_type = 'PrunedVGG'  # the compact export (tools/export_pruned.py)
    baseline_type = 'mmpretrain.VGG'  # the full-width network it explores

    def __init__(self, depth: int = 19, ratio: float = 0.5, execution: str = 'thin',
                 freeze_inactive: bool = True, init: str = 'untried', seed: int = 0,
                 **kwargs):
        super().__init__(depth, **kwargs)
        self._check_chain_args()
        self.depth = depth
        self._rebuild_layers(lambda name, layer: BanditVGGLayer(**chain_layer_args(layer)))
        self._init_bandit(self._find_arms(), ratio, execution, freeze_inactive, init, seed)

    def bandit_blocks(self):
        return self.chain_layers()

    def stage_of(self, site: str) -> str:
        """``'features.<j>'`` -> ``'stage<i>'``, the VGG stage (1-based) holding layer j."""
        j = int(site.rsplit('.', 1)[1])
        return next(f'stage{i + 1}' for i, (start, end) in enumerate(self.range_sub_modules)
                    if start <= j < end)

    def _find_arms(self) -> List[Arm]:
        layers = [layer for _, layer in self.chain_layers()]
        return [Arm(name, OUTPUT, layer.conv.out_channels, ((layer.conv, layer.norm), ),
                    ((layers[i + 1].conv, None, 0), ) if i + 1 < len(layers) else ())
                for i, (name, layer) in enumerate(self.chain_layers())]  # the head: outside

    def _assign(self, masks: List[torch.Tensor], record: bool) -> None:
        super()._assign(masks, record)
        # a layer reads what the previous one handed on: its input set is that one's output
        previous = None
        for name, layer in self.chain_layers():
            step = self._steps[name]
            if previous is not None:
                step = BanditStep(dict(step.masks, input=previous), step.saliency)
                self._steps[name] = layer.bandit_step = step
            previous = step.masks[OUTPUT]

    def handed_on(self, layer):
        index = layer.bandit_step.get(OUTPUT) if layer.bandit_part is THIN else None
        return index, layer.conv.out_channels

    def pruned_channel_cfg(self, masks: List[torch.Tensor]) -> dict:
        """The ``channel_cfg`` of :class:`~mmmod.models.backbones.PrunedVGG` keeping the
        channels of ``masks``: each layer's kept outputs, and as its input the previous
        layer's (the first layer reads the whole image).

        Example:
            >>> model = BanditVGG(depth=11, ratio=0.3, norm_cfg=dict(type='BN'))
            >>> cfg = model.pruned_channel_cfg(model.fixed_masks('random'))
            >>> cfg['blocks']['features.0']['input'], sorted(cfg['blocks'])[:2]
            ([0, 1, 2], ['features.0', 'features.10'])
        """
        blocks, previous = {}, None
        for (name, layer), mask in zip(self.chain_layers(), masks):
            kept = mask.nonzero().flatten().tolist()
            blocks[name] = dict(input=list(range(layer.conv.in_channels))
                                if previous is None else previous, output=kept)
            previous = kept
        return dict(depth=self.depth, blocks=blocks)

    def forward(self, x: torch.Tensor):
        self._check_bandit_step()
        return super().forward(x)
