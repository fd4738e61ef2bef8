"""Finding the gated backbone inside whatever a runner holds.

A runner's model may be wrapped (DDP, FSDP, mmengine's ``MMDistributedDataParallel``), or be a
test-time-augmentation wrapper (``BaseTTAModel`` keeps the model in ``.module`` without being a
registered model wrapper). The hooks, the optimizer constructor, the BN recalibration and the
complexity tool all need the one backbone with gates (:class:`GatedBackboneMixin`), so the
search is written once, here.
"""
from typing import Optional

import torch.nn as nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """``model`` without its DDP / FSDP / TTA wrappers (each keeps the model in ``.module``)."""
    from mmengine.model import is_model_wrapper
    while is_model_wrapper(model) or (isinstance(getattr(model, 'module', None), nn.Module)
                                      and not hasattr(model, 'backbone')):
        model = model.module
    return model


def _is_gated_backbone(module) -> bool:
    from mmmod.models.backbones._gate_utils import GatedBackboneMixin
    return isinstance(module, GatedBackboneMixin)


def find_gated_backbone(model: nn.Module, required: bool = True) -> Optional[nn.Module]:
    """The gated backbone of ``model``: ``model.backbone`` if it is one (the OpenMMLab
    classifiers, segmentors and detectors), else the first :class:`GatedBackboneMixin` module.

    Args:
        model (nn.Module): a model, possibly wrapped, or a gated backbone itself.
        required (bool): raise when there is none; otherwise return None.

    Raises:
        ValueError: ``required`` and no gated backbone in ``model``.
    """
    model = unwrap_model(model)
    backbone = getattr(model, 'backbone', None)
    if backbone is not None and _is_gated_backbone(backbone):
        return backbone
    for module in model.modules():
        if _is_gated_backbone(module):
            return module
    if required:
        raise ValueError(f'{type(model).__name__} has no gated backbone (a GatedBackboneMixin '
                         f'such as GatedResNet or GatedMobileNetV2); the gate hooks, '
                         f'GateOptimWrapperConstructor and the gate tools need one')
    return None
