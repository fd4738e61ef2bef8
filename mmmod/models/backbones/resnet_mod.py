"""ResNet with CNN Mixture-of-Depths blocks (Cakaj et al., "CNN Mixture-of-Depths", ACCV 2024).

Every stage starts with a standard block; blocks 1, 3, 5, ... become :class:`MoDBlock` s whose
slim branch is the replaced block's residual branch at width ``k = floor(C / c)`` (Sec. 3.2), so
the depth in the name is unchanged (ResNet86-MoD has 86 layers). The standard parts are
mmpretrain's ResNet unchanged -- stem, blocks, state-dict names, frozen stages, norm_eval,
zero_init_residual, init_cfg -- so upstream ResNet weights load into them and the backbone is a
drop-in for mmpretrain classifiers, mmseg FCN (deep stem, dilated stages) and mmdet Faster R-CNN.
"""
from typing import Sequence, Union

import torch
import torch.nn as nn
from mmengine.model.weight_init import constant_init
from mmpretrain.models.backbones.resnet import BasicBlock, Bottleneck

from mmmod.registry import MODELS
from ..layers import MoDBlock, num_selected_channels
from ..layers.channel_structure import slim_branch
from ._mod_utils import mod_block_masks
from .base import MOD_DEPTHS, ResNetBase, V1cStem, resnet_arch_settings


def mod_branch(block: type, k: int, dilation: int = 1, expansion: int = 4, conv_cfg=None,
               norm_cfg=dict(type='BN')) -> nn.Sequential:
    """The residual branch of ``block`` at width k, ending in a norm (no activation): the
    block's own description (:func:`~mmmod.models.layers.channel_structure.slim_branch`) at
    the stream width k and the inner width k / expansion (at least 1).

    Bottleneck: 1x1 k -> k/expansion, 3x3, 1x1 -> k. BasicBlock: 3x3 k -> k, 3x3 k -> k.
    (N, k, H, W) -> (N, k, H, W); stride 1, the stage's dilation.
    """
    if not issubclass(block, (Bottleneck, BasicBlock)):
        raise TypeError(f'no MoD branch for block type {block.__name__}; '
                        'expected a BasicBlock or Bottleneck subclass')
    bottleneck = issubclass(block, Bottleneck)
    expansion = expansion if bottleneck else 1
    with torch.device('meta'):  # only its geometry is read
        reference = block(expansion, expansion, expansion=expansion, dilation=dilation)
    inner = max(1, k // expansion)
    widths = dict(input=k, conv1=inner, conv2=inner if bottleneck else k, conv3=k)
    return slim_branch(reference, widths, conv_cfg, norm_cfg)


@MODELS.register_module()
class ResNetMoD(ResNetBase):
    """ResNet-MoD backbone.

    Args:
        depth (int): one of ``ResNetMoD.arch_settings`` (18, 26, 34, 42, 50, 75, 86, 101, 152),
            the depths of the paper's appendix Table 5.
        channel_reduction (int): the paper's c in ``k = floor(C / c)`` (the extent of channel
            reduction); 64 for ResNets (the widest input of the first block, Sec. 3.2).
            Default 64.
        mod_pattern (str | list): ``'alternate'`` (default, the paper), ``'all'``, ``'none'`` or
            an explicit per-stage 0/1 mask, see :func:`mod_block_masks`.
        fusion (str): ``'first'`` (default), ``'last'`` (MoD-lk) or ``'original'``.
        selection (str): ``'topk'`` (default) or ``'random'`` (MoD rand.).
        selector_reduction (int): r of the Channel Selector, hidden = C // r. Default 16.
        contract_dilation, pretrained, **kwargs: as
            :class:`~mmmod.models.backbones.base.ResNetBase` (mmseg's dilation rule, mmseg's
            ``pretrained``, everything of mmpretrain's ``ResNet``).

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
    arch_settings = resnet_arch_settings(dict(basic=BasicBlock, bottleneck=Bottleneck),
                                         MOD_DEPTHS)

    def __init__(self,
                 depth: int,
                 channel_reduction: int = 64,
                 mod_pattern: Union[str, Sequence[Sequence[int]]] = 'alternate',
                 fusion: str = 'first',
                 selection: str = 'topk',
                 selector_reduction: int = 16,
                 contract_dilation: bool = False,
                 pretrained=None,
                 **kwargs):
        _, stage_blocks = self.arch_of(depth, kwargs.get('num_stages', 4))
        num_selected_channels(1, channel_reduction)  # validates c before anything is built
        # Read by make_block, which ResNet.__init__ reaches once per block.
        self._mod_masks = mod_block_masks(stage_blocks, mod_pattern)
        self._mod_cfg = dict(fusion=fusion, selection=selection,
                             selector_reduction=selector_reduction)
        self.channel_reduction = channel_reduction
        self.mod_pattern = mod_pattern
        super().__init__(depth, contract_dilation, pretrained, **kwargs)

    def make_block(self, stage: int, index: int, block: type, **kwargs) -> nn.Module:
        """Block ``index`` of ``stage``: a MoD block where the mask says so, else upstream's."""
        if not self._mod_masks[stage][index]:
            return block(**kwargs)
        out_channels = kwargs['out_channels']
        k = num_selected_channels(out_channels, self.channel_reduction)
        branch = mod_branch(block, k, kwargs['dilation'], kwargs['expansion'],
                            kwargs.get('conv_cfg'), kwargs.get('norm_cfg', dict(type='BN')))
        return MoDBlock(out_channels, k, branch, drop_path_rate=kwargs['drop_path_rate'],
                        **self._mod_cfg)

    def init_weights(self):
        super().init_weights()
        pretrained = isinstance(self.init_cfg, dict) and self.init_cfg['type'] == 'Pretrained'
        if self.zero_init_residual and not pretrained:
            # The MoD branch is a residual branch too: start it at zero like upstream's blocks.
            for m in self.modules():
                if isinstance(m, MoDBlock) and isinstance(m.branch, nn.Sequential):
                    constant_init(m.branch[-1].norm, 0)


@MODELS.register_module()
class ResNetV1cMoD(V1cStem, ResNetMoD):
    """ResNetMoD with the V1c deep stem (three 3x3 convs), the mmseg FCN backbone."""
