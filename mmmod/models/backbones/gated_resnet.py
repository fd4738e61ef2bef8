"""ResNet with Gumbel channel gates (end-to-end channel gating, Herrmann et al., Fig. 2, Sec. 3.4).

Every residual block is gated; a block samples all its gates at once from its input (pooled, for
data-dependent gates) and multiplies each gated tensor by them::

    Bottleneck                                    BasicBlock
    x -+-> [input] -> conv1-bn-relu -> [conv1]    x -+-> [input] -> conv1-bn-relu -> [conv1]
       |   -> conv2-bn-relu -> [conv2]               |   -> conv2-bn -> [conv2] --+
       |   -> conv3-bn -> [conv3] ------------+      +-> downsample -> [downsample] -> + -> relu
       +-> downsample -> [downsample] ------> + -> relu   (identity when no downsample)

``[name]`` is a :class:`ChannelGate` (the input gate acts on the residual branch only); the
positions are those of the blocks' one description,
:mod:`mmmod.models.layers.channel_structure`, which the gated forward and FLOPs walk. Block,
stem, state-dict names and the backbone contract are mmpretrain's, so a plain ResNet state dict
loads with only the gate parameters (``layerX.Y.gate.*``) missing.
"""
from typing import Mapping, Union

import torch  # noqa: F401  (used by the doctest examples)
import torch.nn as nn
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck

from mmmod.registry import MODELS
from ..layers.channel_structure import BASIC_BLOCK, BOTTLENECK, structure_of
from ..layers.gumbel_gate import GatedBlockMixin
from ._gate_utils import GatedBackboneMixin, resolve_granularity
from .base import ResNetBase, V1cStem, resnet_arch_settings


class _GatedResidualBlock(GatedBlockMixin):
    """What both gated ResNet blocks add to upstream's: a gate per position of the block's
    channel structure (the forward and FLOPs are :class:`GatedBlockMixin`'s walks)."""

    def __init__(self, *args, granularity: Mapping[str, int], gate_type: str = 'dependent',
                 gate_hidden: int = 16, always_on: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_gated_structure(structure_of(self), granularity, always_on, gate_type,
                                   gate_hidden)


class GatedBottleneck(_GatedResidualBlock, Bottleneck):
    """mmpretrain's Bottleneck with gates on its input (residual branch only), after
    conv1-bn-relu, after conv2-bn-relu, after conv3-bn (before the add) and on the projection
    shortcut: the positions of :data:`~mmmod.models.layers.channel_structure.BOTTLENECK`.

    Args:
        granularity (dict): position -> filters per gate.
        gate_type (str): ``'dependent'`` or ``'independent'``.
        gate_hidden (int): width of each dependent gate's network. Default 16.
        always_on (int): leading groups of each gated tensor never gated. Default 1.
        **kwargs: mmpretrain's Bottleneck arguments.

    Shapes:
        x: (N, C_in, H, W) -> (N, C_out, H / stride, W / stride)

    Example:
        >>> block = GatedBottleneck(64, 256, granularity=dict(
        ...     input=16, conv1=8, conv2=8, conv3=16, downsample=16),
        ...     downsample=nn.Conv2d(64, 256, 1)).eval()
        >>> block(torch.rand(2, 64, 8, 8)).shape, block.num_learned_gates
        (torch.Size([2, 256, 8, 8]), 47)
    """

    # all positions of the channel structure; an instance's ``gate_positions`` are the gated ones
    gateable_positions = BOTTLENECK.positions


class GatedBasicBlock(_GatedResidualBlock, BasicBlock):
    """mmpretrain's BasicBlock with gates on its input (residual branch only), after
    conv1-bn-relu, after conv2-bn (before the add) and on the projection shortcut.

    Args: as :class:`GatedBottleneck` (positions input, conv1, conv2, downsample).

    Example:
        >>> block = GatedBasicBlock(16, 16, granularity=dict(
        ...     input=4, conv1=4, conv2=4, downsample=4)).eval()
        >>> block(torch.rand(2, 16, 8, 8)).shape, block.gate_positions
        (torch.Size([2, 16, 8, 8]), ('input', 'conv1', 'conv2'))
    """

    # all positions of the channel structure; an instance's ``gate_positions`` are the gated ones
    gateable_positions = BASIC_BLOCK.positions


@MODELS.register_module()
class GatedResNet(GatedBackboneMixin, ResNetBase):
    """ResNet whose residual blocks carry Gumbel channel gates.

    Args:
        depth (int): 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks).
        gate_type (str): ``'dependent'`` (conditional computation: a gate network per block
            reads the pooled block input) or ``'independent'`` (pruning: learned logits).
        granularity (str | dict): ``'low'`` (the paper's ResNet-50 setting, Sec. 4.2: 16, 32,
            64, 128 filters per gate in stages 1-4 on the block input, conv3 output and
            shortcut, half that on conv1/conv2 outputs; basic blocks use the halved values
            everywhere) or a dict position -> int or per-stage tuple, with the positions of
            ``granularity_settings``.
        gate_loss (dict | None): loss on the gates, e.g. ``dict(type='BatchActivationLoss',
            target=0.5)`` or ``'FLOPsActivationLoss'``; computed in training and attached to
            the last output. None: no loss (e.g. fine-tuning a thresholded model).
        gate_mode (str): inference mode, one of ``GATE_MODES``. Default ``'threshold'``.
        gate_tau (float): threshold of ``'threshold'`` mode. Default 0.5.
        gate_hidden (int): width of each dependent gate's network. Default 16.
        contract_dilation, pretrained, **kwargs: as
            :class:`~mmmod.models.backbones.base.ResNetBase` (mmseg's dilation rule, mmseg's
            ``pretrained``, everything of mmpretrain's ``ResNet``).

    Shapes:
        x: (N, in_channels, H, W) -> tuple of (N, C_i, H / s_i, W / s_i) for i in out_indices.
        Gate side outputs: ``gate_stats``, ``gate_records()``, each block's ``last_gates``.

    Example:
        >>> model = GatedResNet(depth=50, out_indices=(0, 1, 2, 3)).eval()
        >>> for out in model(torch.rand(1, 3, 64, 64)):
        ...     print(tuple(out.shape))
        (1, 256, 16, 16)
        (1, 512, 8, 8)
        (1, 1024, 4, 4)
        (1, 2048, 2, 2)
        >>> model.num_gates, round(model.gate_stats['gate_rate'], 2)
        (728, 1.0)
    """

    arch_settings = resnet_arch_settings(dict(basic=GatedBasicBlock,
                                              bottleneck=GatedBottleneck))
    # granularity: block -> position -> filters per gate in stages 1-4 (Sec. 4.2)
    granularity_settings = {
        'low': {
            GatedBottleneck: dict(input=(16, 32, 64, 128), conv1=(8, 16, 32, 64),
                                  conv2=(8, 16, 32, 64), conv3=(16, 32, 64, 128),
                                  downsample=(16, 32, 64, 128)),
            GatedBasicBlock: dict(input=(8, 16, 32, 64), conv1=(8, 16, 32, 64),
                                  conv2=(8, 16, 32, 64), downsample=(8, 16, 32, 64)),
        },
    }

    def __init__(self,
                 depth: int,
                 gate_type: str = 'dependent',
                 granularity: Union[str, dict] = 'low',
                 gate_loss=dict(type='BatchActivationLoss', target=0.5),
                 gate_mode: str = 'threshold',
                 gate_tau: float = 0.5,
                 gate_hidden: int = 16,
                 contract_dilation: bool = False,
                 pretrained=None,
                 **kwargs):
        block, stage_blocks = self.arch_of(depth, kwargs.get('num_stages', 4))
        settings = {name: table[block] for name, table in self.granularity_settings.items()}
        # Read by make_block, which ResNet.__init__ reaches once per block.
        self._stage_granularity = resolve_granularity(
            granularity, settings, block.gateable_positions, len(stage_blocks), type(self).__name__)
        self._gate_cfg = dict(gate_type=gate_type, gate_hidden=gate_hidden)
        self.gate_type = gate_type
        self.granularity = granularity
        super().__init__(depth, contract_dilation, pretrained, **kwargs)
        self._init_gating(gate_loss, gate_mode, gate_tau)

    def make_block(self, stage: int, index: int, block: type, **kwargs) -> nn.Module:
        """A gated block with its stage's granularity."""
        return block(granularity=self._stage_granularity[stage], **self._gate_cfg, **kwargs)


@MODELS.register_module()
class GatedResNetV1c(V1cStem, GatedResNet):
    """GatedResNet with the V1c deep stem (three 3x3 convs), the mmseg FCN backbone."""
