"""ResNet with CNN Mixture-of-Depths blocks (Cakaj et al., "CNN Mixture-of-Depths", ACCV 2024).

Every stage starts with a standard block; blocks 1, 3, 5, ... become :class:`MoDBlock` s whose
slim branch is the replaced block's residual branch at width ``k = floor(C / c)`` (Sec. 3.2), so
the depth in the name is unchanged (ResNet86-MoD has 86 layers). The standard parts are
mmpretrain's ResNet unchanged -- stem, blocks, state-dict names, frozen stages, norm_eval,
zero_init_residual, init_cfg -- so upstream ResNet weights load into them and the backbone is a
drop-in for mmpretrain classifiers, mmseg FCN (deep stem, dilated stages) and mmdet Faster R-CNN.
"""
from typing import Sequence, Union

import torch  # noqa: F401  (used by the doctest examples)
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model.weight_init import constant_init
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck, ResLayer, ResNet

from mmmod.registry import MODELS
from ..layers import MoDBlock, num_selected_channels
from ._mod_utils import MoDBackboneMixin, mod_block_masks, pretrained_to_init_cfg


def mod_branch(block: type, k: int, dilation: int = 1, expansion: int = 4, conv_cfg=None,
               norm_cfg=dict(type='BN')) -> nn.Sequential:
    """The residual branch of ``block`` at width k, ending in a norm (no activation).

    Bottleneck: 1x1 k -> k/expansion, 3x3, 1x1 -> k. BasicBlock: 3x3 k -> k, 3x3 k -> k.
    (N, k, H, W) -> (N, k, H, W); stride 1, the stage's dilation.
    """
    conv = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
    if issubclass(block, Bottleneck):
        mid = max(1, k // expansion)
        return nn.Sequential(
            ConvModule(k, mid, 1, **conv),  # reduce
            ConvModule(mid, mid, 3, padding=dilation, dilation=dilation, **conv),
            ConvModule(mid, k, 1, act_cfg=None, **conv))  # expand, no act: fused by addition
    if issubclass(block, BasicBlock):
        return nn.Sequential(
            ConvModule(k, k, 3, padding=dilation, dilation=dilation, **conv),
            ConvModule(k, k, 3, padding=dilation, dilation=dilation, act_cfg=None, **conv))
    raise TypeError(f'no MoD branch for block type {block.__name__}; '
                    'expected a BasicBlock or Bottleneck subclass')


@MODELS.register_module()
class ResNetMoD(MoDBackboneMixin, ResNet):
    """ResNet-MoD backbone.

    Args:
        depth (int): one of ``ResNetMoD.arch_settings`` (18, 26, 34, 42, 50, 75, 86, 101, 152),
            the depths of the paper's appendix Table 5.
        mod_c (int): c of ``k = floor(C / c)``; 64 for ResNets (the widest input of the first
            block, Sec. 3.2). Default 64.
        mod_pattern (str | list): ``'alternate'`` (default, the paper), ``'all'``, ``'none'`` or
            an explicit per-stage 0/1 mask, see :func:`mod_block_masks`.
        fusion (str): ``'first'`` (default), ``'last'`` (MoD-lk) or ``'original'``.
        selection (str): ``'topk'`` (default) or ``'random'`` (MoD rand.).
        selector_reduction (int): r of the Channel Selector, hidden = C // r. Default 16.
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
        >>> model = ResNetMoD(depth=50, out_indices=(0, 1, 2, 3)).eval()
        >>> for out in model(torch.rand(1, 3, 224, 224)):
        ...     print(tuple(out.shape))
        (1, 256, 56, 56)
        (1, 512, 28, 28)
        (1, 1024, 14, 14)
        (1, 2048, 7, 7)
    """

    # depth: (block, blocks per stage) -- appendix Table 5 of the CNN-MoD paper
    arch_settings = {
        18: (BasicBlock, (2, 2, 2, 2)),
        26: (BasicBlock, (2, 2, 3, 4)),
        34: (BasicBlock, (3, 4, 6, 3)),
        42: (BasicBlock, (3, 3, 6, 6)),
        50: (Bottleneck, (3, 4, 6, 3)),
        75: (Bottleneck, (3, 4, 14, 3)),
        86: (Bottleneck, (3, 4, 18, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }

    def __init__(self,
                 depth: int,
                 mod_c: int = 64,
                 mod_pattern: Union[str, Sequence[Sequence[int]]] = 'alternate',
                 fusion: str = 'first',
                 selection: str = 'topk',
                 selector_reduction: int = 16,
                 contract_dilation: bool = False,
                 pretrained=None,
                 **kwargs):
        if depth not in self.arch_settings:
            raise KeyError(f'invalid depth {depth!r} for {type(self).__name__}; choose from '
                           f'{sorted(self.arch_settings)}')
        num_selected_channels(1, mod_c)  # validates c before anything is built
        num_stages = kwargs.get('num_stages', 4)
        # Read by make_res_layer, which ResNet.__init__ calls once per stage.
        self._mod_masks = mod_block_masks(self.arch_settings[depth][1][:num_stages], mod_pattern)
        self._mod_cfg = dict(mod_c=mod_c, fusion=fusion, selection=selection,
                             selector_reduction=selector_reduction)
        self.contract_dilation = contract_dilation
        if pretrained is not None:
            kwargs['init_cfg'] = pretrained_to_init_cfg(pretrained, kwargs.get('init_cfg'))
        self.input_channels = kwargs.get('in_channels', 3)
        super().__init__(depth=depth, **kwargs)
        self.mod_c = mod_c
        self.mod_pattern = mod_pattern

    def make_res_layer(self, block, num_blocks, in_channels, out_channels, expansion, stride=1,
                       dilation=1, avg_down=False, drop_path_rate=0.0,
                       **kwargs) -> nn.Sequential:
        """One stage: upstream's block 0 (stride, projection), then standard or MoD blocks."""
        stage = len(self.res_layers)  # ResNet.__init__ appends each stage after building it
        mask = self._mod_masks[stage]
        dpr = (drop_path_rate if isinstance(drop_path_rate, (list, tuple))
               else [drop_path_rate] * num_blocks)
        first_dilation = dilation // 2 if self.contract_dilation and dilation > 1 else dilation
        # Block 0 through upstream's ResLayer, so its downsample (incl. avg_down) is upstream's.
        first = ResLayer(block, 1, in_channels, out_channels, expansion=expansion, stride=stride,
                         avg_down=avg_down, dilation=first_dilation, drop_path_rate=dpr[:1],
                         **kwargs)[0]
        blocks = [first]
        for i in range(1, num_blocks):
            if mask[i]:
                k = num_selected_channels(out_channels, self._mod_cfg['mod_c'])
                branch = mod_branch(block, k, dilation, expansion, kwargs.get('conv_cfg'),
                                    kwargs.get('norm_cfg', dict(type='BN')))
                blocks.append(MoDBlock(
                    out_channels, k, branch, fusion=self._mod_cfg['fusion'],
                    selection=self._mod_cfg['selection'],
                    selector_reduction=self._mod_cfg['selector_reduction'],
                    drop_path_rate=dpr[i]))
            else:
                blocks.append(block(in_channels=out_channels, out_channels=out_channels,
                                    expansion=expansion, stride=1, dilation=dilation,
                                    drop_path_rate=dpr[i], **kwargs))
        return nn.Sequential(*blocks)

    def init_weights(self):
        super().init_weights()
        pretrained = isinstance(self.init_cfg, dict) and self.init_cfg['type'] == 'Pretrained'
        if self.zero_init_residual and not pretrained:
            # The MoD branch is a residual branch too: start it at zero like upstream's blocks.
            for m in self.modules():
                if isinstance(m, MoDBlock) and isinstance(m.branch, nn.Sequential):
                    constant_init(m.branch[-1].norm, 0)


@MODELS.register_module()
class ResNetV1cMoD(ResNetMoD):
    """ResNetMoD with the V1c deep stem (three 3x3 convs), the mmseg FCN backbone."""

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=False, **kwargs)
