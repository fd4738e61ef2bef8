"""mmmod's part of the backbone contract, written once for every method (MoD, PiX, gating,
pruning, dynamic channel execution).

Upstream (mmpretrain's ``ResNet`` / ``MobileNetV2``) owns the stem, the state-dict names
(``conv1``, ``norm1``, ``layer1..4``, ``conv2``), ``out_indices``, ``frozen_stages``,
``norm_eval`` and ``init_cfg``. The bases here add what every mmmod backbone needs on top:

- the variants as data: one ResNet depth table (:data:`RESNET_DEPTHS`) and one MobileNetV2 table
  (:data:`MOBILENET_V2_ARCHS`), read by the backbones, the converters and the benchmarks;
- depth / arch validation whose error names the valid choices;
- ``pretrained`` (mmseg copies ``model.pretrained`` into the backbone) -> a Pretrained init_cfg;
- the input-channel check and a chainable ``train()`` (:class:`BackboneContractMixin`);
- for ResNets the dilation rule (``contract_dilation``), the drop-path list and block 0 through
  upstream's ``ResLayer`` (so its downsample, incl. ``avg_down``, is upstream's): the pure stage
  builder :func:`build_res_stage`; for MobileNetV2 :func:`build_inverted_residual_stage`;
- the V1c deep stem for every family: ``class XxxV1c(V1cStem, Xxx)`` (:class:`V1cStem`).

A method supplies only its block factory: ``make_block(stage, index, **block_kwargs)``, given
upstream's block arguments (``in_channels``, ``out_channels``, ``stride``, ...), returns block
``index`` of stage ``stage``.
"""
import warnings
from functools import partial
from typing import Callable, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmpretrain.models.backbones.mobilenet_v2 import InvertedResidual, MobileNetV2
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck, ResLayer, ResNet

# depth: (block kind, blocks per stage) -- mmpretrain's ResNet depths (18, 34, 50, 101, 152)
# and those the CNN-MoD paper adds in its appendix Table 5 (26, 42, 75, 86)
RESNET_DEPTHS: Dict[int, Tuple[str, Tuple[int, ...]]] = {
    18: ('basic', (2, 2, 2, 2)),
    26: ('basic', (2, 2, 3, 4)),
    34: ('basic', (3, 4, 6, 3)),
    42: ('basic', (3, 3, 6, 6)),
    50: ('bottleneck', (3, 4, 6, 3)),
    75: ('bottleneck', (3, 4, 14, 3)),
    86: ('bottleneck', (3, 4, 18, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
STANDARD_DEPTHS = (18, 34, 50, 101, 152)  # mmpretrain's ResNet
MOD_DEPTHS = tuple(RESNET_DEPTHS)  # ResNetMoD: all of appendix Table 5

# t, c, n, s  (expand ratio, channels, blocks, stride of the row's first block)
MOBILENET_V2_ARCHS: Dict[str, List[List[int]]] = {
    # torchvision's and mmpretrain's MobileNetV2 (features.1..17 / layer1..7 in order)
    'MoD': [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
            [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]],
    # the CNN-MoD paper's deeper variant (Table 2)
    'MoD-L': [[1, 16, 1, 1], [6, 32, 2, 2], [6, 64, 3, 2], [6, 96, 4, 2],
              [6, 128, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]],
}
MOBILENET_V2 = MOBILENET_V2_ARCHS['MoD']  # the standard table

BlockFactory = Callable[..., nn.Module]


def resnet_arch_settings(blocks: Mapping[str, type], depths: Iterable[int] = STANDARD_DEPTHS
                         ) -> Dict[int, Tuple[type, Tuple[int, ...]]]:
    """Upstream's ``arch_settings`` (depth -> (block class, blocks per stage)) for ``depths`` of
    :data:`RESNET_DEPTHS`, with a method's block class per kind.

    Example:
        >>> settings = resnet_arch_settings(dict(basic=BasicBlock, bottleneck=Bottleneck), (18, 50))
        >>> {depth: (block.__name__, blocks) for depth, (block, blocks) in settings.items()}
        {18: ('BasicBlock', (2, 2, 2, 2)), 50: ('Bottleneck', (3, 4, 6, 3))}
    """
    return {d: (blocks[RESNET_DEPTHS[d][0]], RESNET_DEPTHS[d][1]) for d in depths}


def check_choice(value, choices: Iterable, what: str, owner: str, hint: str = '') -> None:
    """Raise ``KeyError`` naming the valid choices when ``value`` is not one of them."""
    choices = list(choices)
    if value not in choices:
        raise KeyError(f'invalid {what} {value!r} for {owner}; choose from {choices}{hint}')


def pretrained_to_init_cfg(pretrained, init_cfg):
    """mmseg copies ``model.pretrained`` into the backbone; turn it into an init_cfg."""
    if not isinstance(pretrained, str):
        raise TypeError(f'pretrained must be a checkpoint path/URL string or None, '
                        f'got {type(pretrained).__name__}')
    if init_cfg is not None:
        raise ValueError('give either pretrained or init_cfg, not both')
    warnings.warn('pretrained is deprecated, use init_cfg=dict(type="Pretrained", '
                  'checkpoint=...) instead', DeprecationWarning)
    return dict(type='Pretrained', checkpoint=pretrained)


def _with_pretrained(kwargs: dict, pretrained) -> dict:
    if pretrained is not None:
        kwargs = dict(kwargs, init_cfg=pretrained_to_init_cfg(pretrained, kwargs.get('init_cfg')))
    return kwargs


class BackboneContractMixin:
    """Put before an mmpretrain backbone class: checks the input and makes ``train()`` chainable.

    ``stem_in_channels`` (the channels the input must have; upstream's ``in_channels`` is
    overwritten while the stages are built) is set by the bases. Upstream's ``train()`` re-applies
    frozen stages and norm_eval but returns None, so ``model.eval()`` could not be chained as in
    plain PyTorch.
    """

    stem_in_channels: int = 3

    def forward(self, x: torch.Tensor):
        if x.dim() != 4 or x.shape[1] != self.stem_in_channels:
            raise ValueError(f'{type(self).__name__} expects (N, {self.stem_in_channels}, H, W) '
                             f'input, got {tuple(x.shape)}')
        return super().forward(x)

    def train(self, mode: bool = True):
        super().train(mode)
        return self


class V1cStem:
    """Put before a ResNet backbone: the V1c deep stem (three 3x3 convs, no avg_down), the
    mmseg FCN backbone -- as mmpretrain's ``ResNetV1c(ResNet)``."""

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=False, **kwargs)


def build_res_stage(make_block: BlockFactory, num_blocks: int, in_channels: int,
                    out_channels: int, *, block: type, expansion: int, stride: int = 1,
                    dilation: int = 1, avg_down: bool = False, contract_dilation: bool = False,
                    drop_path_rate: Union[float, Sequence[float]] = 0.0, **kwargs
                    ) -> Tuple[nn.Sequential, int]:
    """One ResNet stage: ``(stage, out_channels)``.

    Block 0 carries the stride, the projection shortcut (upstream's ``ResLayer`` builds it,
    incl. ``avg_down``) and, with ``contract_dilation`` (mmseg), half the stage's dilation.
    ``make_block(index, block=..., **block_kwargs)`` builds each block from upstream's block
    arguments (``in_channels``, ``out_channels``, ``expansion``, ``stride``, ``dilation``,
    ``drop_path_rate``, ``downsample`` for block 0, ``style``, ``with_cp``, ``conv_cfg``,
    ``norm_cfg``).

    Example:
        >>> stage, width = build_res_stage(lambda i, block, **kw: block(**kw), 2, 64, 256,
        ...                                block=Bottleneck, expansion=4, stride=2)
        >>> width, tuple(stage(torch.rand(1, 64, 8, 8)).shape)
        (256, (1, 256, 4, 4))
    """
    dpr = (list(drop_path_rate) if isinstance(drop_path_rate, (list, tuple))
           else [drop_path_rate] * num_blocks)
    first_dilation = dilation // 2 if contract_dilation and dilation > 1 else dilation
    first = ResLayer(partial(make_block, 0, block=block), 1, in_channels, out_channels,
                     expansion=expansion, stride=stride, avg_down=avg_down,
                     dilation=first_dilation, drop_path_rate=dpr[:1], **kwargs)[0]
    blocks = [first] + [
        make_block(i, block=block, in_channels=out_channels, out_channels=out_channels,
                   expansion=expansion, stride=1, dilation=dilation, drop_path_rate=dpr[i],
                   **kwargs)
        for i in range(1, num_blocks)]
    return nn.Sequential(*blocks), out_channels


def build_inverted_residual_stage(make_block: BlockFactory, in_channels: int, out_channels: int,
                                  num_blocks: int, stride: int, expand_ratio: float, **kwargs
                                  ) -> Tuple[nn.Sequential, int]:
    """One MobileNetV2 table row: ``(stage, out_channels)``; block 0 carries the stride.
    ``make_block(index, in_channels=..., out_channels=..., stride=..., expand_ratio=...,
    **kwargs)`` builds each block (``kwargs``: conv_cfg, norm_cfg, act_cfg, with_cp).

    Example:
        >>> stage, width = build_inverted_residual_stage(
        ...     lambda i, **kw: InvertedResidual(**kw), 16, 24, 2, 2, 6)
        >>> width, tuple(stage(torch.rand(1, 16, 8, 8)).shape)
        (24, (1, 24, 4, 4))
    """
    blocks = [make_block(i, in_channels=in_channels if i == 0 else out_channels,
                         out_channels=out_channels, stride=stride if i == 0 else 1,
                         expand_ratio=expand_ratio, **kwargs)
              for i in range(num_blocks)]
    return nn.Sequential(*blocks), out_channels


class ResNetBase(BackboneContractMixin, ResNet):
    """mmpretrain's ResNet with mmmod's contract; a method overrides :meth:`make_block` and
    sets ``arch_settings = resnet_arch_settings({'basic': ..., 'bottleneck': ...}, depths)``.

    Args:
        depth (int): one of ``arch_settings``.
        contract_dilation (bool): as mmseg's ResNet: halve the dilation of the first block of a
            dilated stage. Default False.
        pretrained (str, optional): mmseg-style checkpoint, converted to a Pretrained init_cfg.
        **kwargs: everything else of mmpretrain's ``ResNet`` (in_channels, stem_channels,
            base_channels, num_stages, strides, dilations, out_indices, style, deep_stem,
            avg_down, frozen_stages, conv_cfg, norm_cfg, norm_eval, with_cp,
            zero_init_residual, init_cfg, drop_path_rate).

    Shapes:
        x: (N, in_channels, H, W) -> tuple of (N, C_i, H / s_i, W / s_i) for i in out_indices.

    Example:
        >>> model = ResNetBase(depth=18, out_indices=(0, 3)).eval()
        >>> [tuple(out.shape) for out in model(torch.rand(1, 3, 64, 64))]
        [(1, 64, 16, 16), (1, 512, 2, 2)]
        >>> ResNetBase(depth=19)
        Traceback (most recent call last):
        KeyError: 'invalid depth 19 for ResNetBase; choose from [18, 34, 50, 101, 152]'
    """

    arch_settings = resnet_arch_settings(dict(basic=BasicBlock, bottleneck=Bottleneck))

    def __init__(self, depth: int, contract_dilation: bool = False, pretrained=None, **kwargs):
        self.arch_of(depth)
        self.contract_dilation = contract_dilation
        self.stem_in_channels = kwargs.get('in_channels', 3)
        super().__init__(depth=depth, **_with_pretrained(kwargs, pretrained))

    @classmethod
    def arch_of(cls, depth: int, num_stages: int = 4) -> Tuple[type, Tuple[int, ...]]:
        """``(block, blocks per stage)`` of ``depth`` for the first ``num_stages`` stages;
        ``KeyError`` naming the valid depths otherwise (so a method can check it first)."""
        check_choice(depth, sorted(cls.arch_settings), 'depth', cls.__name__)
        block, stage_blocks = cls.arch_settings[depth]
        return block, tuple(stage_blocks[:num_stages])

    def make_res_layer(self, **kwargs) -> nn.Sequential:
        """Upstream's hook, called by ``ResNet.__init__`` once per stage."""
        stage = len(self.res_layers)  # ResNet.__init__ appends each stage after building it
        layer, _ = build_res_stage(partial(self.make_block, stage),
                                   contract_dilation=self.contract_dilation, **kwargs)
        return layer

    def make_block(self, stage: int, index: int, block: type, **kwargs) -> nn.Module:
        """The block factory: block ``index`` of ``stage`` from upstream's block arguments."""
        return block(**kwargs)

    def stem_parts(self) -> Tuple[tuple, nn.Conv2d, nn.Module, nn.Module]:
        """``(layers before the stem's last conv, that conv, its norm, its activation)``:
        ``conv1, bn1, relu`` or, with the deep stem, the last ConvModule's."""
        if not self.deep_stem:
            return (), self.conv1, self.norm1, self.relu
        *pre, last = self.stem
        return tuple(pre), last.conv, last.norm, last.activate


class MobileNetV2Base(BackboneContractMixin, MobileNetV2):
    """mmpretrain's MobileNetV2 with mmmod's contract; a method overrides :meth:`make_block`.

    Args:
        arch (str | list): a name of ``arch_zoo`` or a ``[[t, c, n, s], ...]`` table.
            Default ``'MoD'``, the standard MobileNetV2.
        pretrained (str, optional): mmseg-style checkpoint, converted to a Pretrained init_cfg.
        **kwargs: everything else of mmpretrain's ``MobileNetV2`` (widen_factor, out_indices,
            frozen_stages, conv_cfg, norm_cfg, act_cfg, norm_eval, with_cp, init_cfg).

    Shapes:
        x: (N, 3, H, W) -> tuple of feature maps for out_indices (7 = conv2, (N, 1280, H/32, W/32)).

    Example:
        >>> print(tuple(MobileNetV2Base().eval()(torch.rand(1, 3, 64, 64))[-1].shape))
        (1, 1280, 2, 2)
    """

    arch_zoo = MOBILENET_V2_ARCHS
    stem_in_channels = 3  # upstream's stem reads 3 channels

    def __init__(self, arch: Union[str, Sequence[Sequence[int]]] = 'MoD', pretrained=None,
                 **kwargs):
        # Read by MobileNetV2.__init__, which builds one stage per row.
        self.arch_settings = self.resolve_arch(arch)
        super().__init__(**_with_pretrained(kwargs, pretrained))

    @classmethod
    def resolve_arch(cls, arch: Union[str, Sequence[Sequence[int]]]) -> List[List[int]]:
        """The ``[[t, c, n, s], ...]`` table of ``arch`` (a name of ``arch_zoo`` or a table)."""
        if isinstance(arch, str):
            check_choice(arch, cls.arch_zoo, 'arch', cls.__name__,
                         ' or give a [[t, c, n, s], ...] table')
            arch = cls.arch_zoo[arch]
        arch = [list(row) for row in arch]
        if not arch or any(len(row) != 4 or min(row) < 1 for row in arch):
            raise ValueError(f'a custom arch must be a list of [t, c, n, s] rows of positive '
                             f'integers, got {arch!r}')
        return arch

    def make_layer(self, out_channels, num_blocks, stride, expand_ratio) -> nn.Sequential:
        """Upstream's hook, called by ``MobileNetV2.__init__`` once per table row."""
        stage = len(self.layers)  # MobileNetV2.__init__ appends each row after building it
        layer, width = build_inverted_residual_stage(
            partial(self.make_block, stage), self.in_channels, out_channels, num_blocks, stride,
            expand_ratio, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg,
            with_cp=self.with_cp)
        self.in_channels = width  # upstream's __init__ reads it for the next row and conv2
        return layer

    def make_block(self, stage: int, index: int, **kwargs) -> nn.Module:
        """The block factory: block ``index`` of table row ``stage``."""
        return InvertedResidual(**kwargs)

    def _freeze_stages(self):
        super()._freeze_stages()
        # mmpretrain 1.2.0 stops the stem's gradients but leaves its BN training: frozen means
        # frozen statistics too, as ResNet's _freeze_stages does for its stem
        if self.frozen_stages >= 0:
            self.conv1.eval()
