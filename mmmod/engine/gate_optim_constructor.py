"""Weight decay for gate parameters divided by the number of gates (Herrmann et al., Sec. 3.3).

Why: for a data-independent gate with logits (w0, w1) and p = sigmoid(w1 - w0), the L2 weight
decay adds a term that is smallest at p = 0.5 -- the opposite of the polarisation the gates
need -- and it is *summed* over all gates, while the batch activation loss (Eq. 1) is an
*average*. So the paper divides the gate parameters' decay by the number of gates |G|:
wd_gate = wd * c / |G|, with c = 20 in the paper (the authors' released code uses 40). The rule
is applied to the dependent gates' networks too, as the paper does.
"""
import copy
from typing import Optional

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper

from mmmod.engine.gated_model import find_gated_backbone
from mmmod.registry import OPTIM_WRAPPER_CONSTRUCTORS

# Parameter names of every gate contain this (gate parameters live under modules named
# ``gate``); it is the custom key mmengine's constructor matches against ``prefix.name``.
GATE_KEY = '.gate.'
PAPER_GATE_DECAY_SCALE = 20.0


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class GateOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor plus one rule: gate parameters (``'.gate.'`` in their
    name) get weight decay ``weight_decay * gate_decay_scale / backbone.num_gates``.

    Everything else in ``paramwise_cfg`` (``norm_decay_mult``, ``bias_lr_mult``, other
    ``custom_keys``, ...) works as in :class:`~mmengine.optim.DefaultOptimWrapperConstructor`;
    the gate rule is the custom key ``'.gate.'``, so as mmengine's custom keys do, it wins over
    the type-based multipliers (e.g. the gate networks' BatchNorm gets the gate decay, not
    ``norm_decay_mult``), and a longer custom key that also matches a gate parameter wins over
    it.

    Args:
        optim_wrapper_cfg (dict): as mmengine's; its optimizer needs ``weight_decay``.
        paramwise_cfg (dict, optional): as mmengine's, plus ``gate_decay_scale`` (c, default
            20 as in the paper; 40 reproduces the authors' code).

    Example:
        >>> optim_wrapper = dict(
        ...     constructor='GateOptimWrapperConstructor',
        ...     optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
        ...     paramwise_cfg=dict(gate_decay_scale=20))
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = copy.deepcopy(paramwise_cfg) if paramwise_cfg else {}
        self.gate_decay_scale = float(paramwise_cfg.pop('gate_decay_scale',
                                                        PAPER_GATE_DECAY_SCALE))
        if self.gate_decay_scale < 0:
            raise ValueError(f'paramwise_cfg.gate_decay_scale must be >= 0, got '
                             f'{self.gate_decay_scale}')
        if GATE_KEY in paramwise_cfg.get('custom_keys', {}):
            raise ValueError(f'GateOptimWrapperConstructor sets custom_keys[{GATE_KEY!r}] '
                             f'itself (decay wd * gate_decay_scale / num_gates); remove it '
                             f'from paramwise_cfg.custom_keys or use '
                             f'DefaultOptimWrapperConstructor')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        if self.base_wd is None:
            raise ValueError('GateOptimWrapperConstructor scales the weight decay of gate '
                             'parameters: the optimizer config needs weight_decay')

    def gate_decay_mult(self, model: nn.Module) -> float:
        """c / |G| for ``model``'s gated backbone."""
        num_gates = int(find_gated_backbone(model).num_gates)
        if num_gates < 1:
            raise ValueError(f'the gated backbone has num_gates={num_gates}; '
                             f'GateOptimWrapperConstructor needs at least one learned gate')
        return self.gate_decay_scale / num_gates

    def __call__(self, model: nn.Module) -> OptimWrapper:
        mult = self.gate_decay_mult(model)
        base_cfg = self.paramwise_cfg
        self.paramwise_cfg = copy.deepcopy(base_cfg)
        self.paramwise_cfg.setdefault('custom_keys', {})[GATE_KEY] = dict(decay_mult=mult)
        try:
            return super().__call__(model)
        finally:
            self.paramwise_cfg = base_cfg
