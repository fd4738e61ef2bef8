"""MobileNetV2 with Gumbel channel gates (end-to-end channel gating, Fig. 2, Sec. 3.4, 4.2).

Every inverted residual gates its input (residual branch only), its expansion and its output::

    x -+-> [input] -> pw conv-bn-relu6 -> dw conv-bn-relu6 -> [expand] -> pw-linear conv-bn
       |                                                                  -> [output] --+
       +----------------------- (identity, when stride 1 and C_in == C_out) ----------> + ->

The expansion gate sits after the depthwise conv: a channel it closes is neither expanded nor
filtered depthwise, and a zero there (not after the expansion conv, where BN + ReLU6 of a zero
is not zero) is exactly what the physically smaller block computes. So a block costs
``H*W*C_exp*(C_in + 9/s^2 + C_out/s^2)`` MACs with the active counts (Sec. 3.4). Blocks with
``t = 1`` have no expansion conv: their expansion tensor is their input, so they have no input
gate. Blocks without a residual connection keep their first group of each tensor always on
(Sec. 4.2: "we keep 1 gate open for non-residual layers"); residual blocks may close completely.
"""
from typing import Mapping, Union

import torch  # noqa: F401  (used by the doctest examples)
import torch.nn as nn
from mmpretrain.models.backbones.mobilenet_v2 import InvertedResidual

from mmmod.registry import MODELS
from ..layers.channel_structure import INVERTED_RESIDUAL, structure_of
from ..layers.gumbel_gate import GatedBlockMixin
from ._gate_utils import GatedBackboneMixin, resolve_granularity
from .base import MOBILENET_V2, MobileNetV2Base

# Groups always on in blocks without / with a residual connection (Sec. 4.2).
ALWAYS_ON_PLAIN = 1
ALWAYS_ON_RESIDUAL = 0


class GatedInvertedResidual(GatedBlockMixin, InvertedResidual):
    """mmpretrain's InvertedResidual with gates on input, expansion and output: the positions
    of :data:`~mmmod.models.layers.channel_structure.INVERTED_RESIDUAL`.

    Args:
        in_channels, out_channels, stride, expand_ratio: as upstream.
        granularity (dict): position (``input``, ``expand``, ``output``) -> filters per gate.
        gate_type (str): ``'dependent'`` or ``'independent'``.
        gate_hidden (int): width of each dependent gate's network. Default 16.
        **kwargs: upstream's conv_cfg, norm_cfg, act_cfg, with_cp.

    Shapes:
        x: (N, C_in, H, W) -> (N, C_out, H / stride, W / stride)

    Example:
        >>> block = GatedInvertedResidual(24, 24, 1, 6, granularity=dict(
        ...     input=8, expand=24, output=8)).eval()
        >>> block(torch.rand(2, 24, 8, 8)).shape, block.num_learned_gates
        (torch.Size([2, 24, 8, 8]), 12)
    """

    # all positions of the channel structure; an instance's ``gate_positions`` are the gated ones
    gateable_positions = INVERTED_RESIDUAL.positions

    def __init__(self, in_channels, out_channels, stride, expand_ratio, *,
                 granularity: Mapping[str, int], gate_type: str = 'dependent',
                 gate_hidden: int = 16, **kwargs):
        super().__init__(in_channels, out_channels, stride, expand_ratio, **kwargs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.with_expand = expand_ratio != 1
        self.hidden_channels = self.conv[-1].conv.in_channels
        always_on = ALWAYS_ON_RESIDUAL if self.use_res_connect else ALWAYS_ON_PLAIN
        # t = 1: the expansion tensor is the input, so the structure has no input position
        self._init_gated_structure(structure_of(self), granularity, always_on, gate_type,
                                   gate_hidden)


@MODELS.register_module()
class GatedMobileNetV2(GatedBackboneMixin, MobileNetV2Base):
    """MobileNetV2 whose inverted residuals carry Gumbel channel gates.

    Args:
        gate_type, gate_loss, gate_mode, gate_tau, gate_hidden: as
            :class:`~mmmod.models.GatedResNet`; use ``gate_loss=dict(type='FLOPsActivationLoss',
            target=...)`` for the paper's MobileNetV2 runs (Sec. 3.4).
        granularity (str | dict): ``'low'`` (the paper's table, Sec. 4.2, one entry per row of
            ``arch_settings``) or a dict ``input``/``expand``/``output`` -> int or one int per
            row (7 rows).
        **kwargs: as :class:`~mmmod.models.backbones.base.MobileNetV2Base` (pretrained and
            mmpretrain's ``MobileNetV2``).

    Shapes:
        x: (N, 3, H, W) -> tuple of feature maps for out_indices (7 = conv2, (N, 1280, H/32, W/32)).

    Example:
        >>> model = GatedMobileNetV2().eval()
        >>> print(tuple(model(torch.rand(1, 3, 64, 64))[-1].shape), model.num_gates)
        (1, 1280, 2, 2) 292
    """

    # filters per gate for each row of arch_settings (t, c, n, s), Sec. 4.2's "low" granularity
    granularity_settings = {
        'low': dict(input=(8, 8, 8, 8, 16, 16, 32),
                    output=(8, 8, 16, 16, 32, 32, 64),
                    expand=(16, 24, 24, 32, 48, 64, 64)),
    }

    def __init__(self,
                 gate_type: str = 'dependent',
                 granularity: Union[str, dict] = 'low',
                 gate_loss=dict(type='FLOPsActivationLoss', target=0.5),
                 gate_mode: str = 'threshold',
                 gate_tau: float = 0.5,
                 gate_hidden: int = 16,
                 **kwargs):
        # Read by make_block, which MobileNetV2.__init__ reaches once per block.
        self._stage_granularity = resolve_granularity(
            granularity, self.granularity_settings, GatedInvertedResidual.gateable_positions,
            len(MOBILENET_V2), type(self).__name__)
        self._gate_cfg = dict(gate_type=gate_type, gate_hidden=gate_hidden)
        self.gate_type = gate_type
        self.granularity = granularity
        super().__init__(MOBILENET_V2, **kwargs)
        self._init_gating(gate_loss, gate_mode, gate_tau)

    def make_block(self, stage: int, index: int, **kwargs) -> nn.Module:
        """A gated inverted residual with its table row's granularity."""
        return GatedInvertedResidual(granularity=self._stage_granularity[stage],
                                     **self._gate_cfg, **kwargs)
