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
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck, ResLayer, ResNet

from mmmod.registry import MODELS
from ..layers.channel_structure import BASIC_BLOCK, BOTTLENECK, structure_of
from ..layers.gumbel_gate import GatedBlockMixin
from ._gate_utils import GatedBackboneMixin, resolve_granularity
from ._mod_utils import pretrained_to_init_cfg


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

    positions = BOTTLENECK.positions


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

    positions = BASIC_BLOCK.positions


@MODELS.register_module()
class GatedResNet(GatedBackboneMixin, ResNet):
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
        contract_dilation (bool): halve the dilation of a dilated stage's first block (mmseg).
        pretrained (str, optional): mmseg-style checkpoint, converted to a Pretrained init_cfg.
        **kwargs: everything else of mmpretrain's ``ResNet`` (in_channels, stem_channels,
            base_channels, num_stages, strides, dilations, out_indices, style, deep_stem,
            avg_down, frozen_stages, conv_cfg, norm_cfg, norm_eval, with_cp,
            zero_init_residual, init_cfg, drop_path_rate).

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

    # depth: (block, blocks per stage)
    arch_settings = {
        18: (GatedBasicBlock, (2, 2, 2, 2)),
        34: (GatedBasicBlock, (3, 4, 6, 3)),
        50: (GatedBottleneck, (3, 4, 6, 3)),
        101: (GatedBottleneck, (3, 4, 23, 3)),
        152: (GatedBottleneck, (3, 8, 36, 3)),
    }
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
        if depth not in self.arch_settings:
            raise KeyError(f'invalid depth {depth!r} for {type(self).__name__}; choose from '
                           f'{sorted(self.arch_settings)}')
        block = self.arch_settings[depth][0]
        num_stages = kwargs.get('num_stages', 4)
        settings = {name: table[block] for name, table in self.granularity_settings.items()}
        # Read by make_res_layer, which ResNet.__init__ calls once per stage.
        self._stage_granularity = resolve_granularity(granularity, settings, block.positions,
                                                      num_stages, type(self).__name__)
        self._gate_cfg = dict(gate_type=gate_type, gate_hidden=gate_hidden)
        self.contract_dilation = contract_dilation
        if pretrained is not None:
            kwargs['init_cfg'] = pretrained_to_init_cfg(pretrained, kwargs.get('init_cfg'))
        self.input_channels = kwargs.get('in_channels', 3)
        super().__init__(depth=depth, **kwargs)
        self.gate_type = gate_type
        self.granularity = granularity
        self._init_gating(gate_loss, gate_mode, gate_tau)

    def make_res_layer(self, block, num_blocks, in_channels, out_channels, expansion, stride=1,
                       dilation=1, avg_down=False, drop_path_rate=0.0, **kwargs):
        """One stage of gated blocks; block 0 carries the stride and the projection shortcut
        (built by upstream's ResLayer, so avg_down and norms are upstream's)."""
        stage = len(self.res_layers)  # ResNet.__init__ appends each stage after building it
        gate_kwargs = dict(granularity=self._stage_granularity[stage], **self._gate_cfg)
        dpr = (list(drop_path_rate) if isinstance(drop_path_rate, (list, tuple))
               else [drop_path_rate] * num_blocks)
        first_dilation = dilation // 2 if self.contract_dilation and dilation > 1 else dilation
        blocks = [ResLayer(block, 1, in_channels, out_channels, expansion=expansion,
                           stride=stride, avg_down=avg_down, dilation=first_dilation,
                           drop_path_rate=dpr[:1], **gate_kwargs, **kwargs)[0]]
        for i in range(1, num_blocks):
            blocks.append(block(in_channels=out_channels, out_channels=out_channels,
                                expansion=expansion, stride=1, dilation=dilation,
                                drop_path_rate=dpr[i], **gate_kwargs, **kwargs))
        return nn.Sequential(*blocks)


@MODELS.register_module()
class GatedResNetV1c(GatedResNet):
    """GatedResNet with the V1c deep stem (three 3x3 convs), the mmseg FCN backbone."""

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=False, **kwargs)
