"""BatchNorm recalibration before evaluation (Herrmann et al., Sec. 4.1).

With low activation rates the BN running statistics of a gated network are unstable, so before
the final evaluation the authors "run training with a learning rate of zero and a large batch
size for 200 batches". :func:`recalibrate_bn` does that without an optimizer: the model in
training mode (so ``norm_eval`` / frozen stages keep their BN layers frozen, as in training),
forward passes of the training loss under ``torch.no_grad()``, no weight touched. The running
statistics of every BN layer in training mode are reset and re-estimated as the cumulative
average over the batches (``momentum=None`` semantics, as the authors did), implemented as the
momentum 1 / (k + 1) at batch k so that every BN -- including the gate networks' functional
batch norm, which reads ``bn.momentum`` -- averages the same way.

Gates: ``gate_mode='train'`` (default) samples them as in training -- exactly the authors'
"training with a learning rate of zero". ``'inference'`` uses the model's inference gate mode
(e.g. threshold 0.5) while the BN layers collect statistics, so the statistics are those of the
sub-networks evaluation will run; an option, not the paper's procedure.
"""
from typing import Dict, Iterable, List

import torch
import torch.nn as nn
from mmengine.utils import ProgressBar
from torch.nn.modules.batchnorm import _BatchNorm

GATE_MODES = ('train', 'inference')


def _batches(dataloader: Iterable, num_batches: int):
    """``num_batches`` batches, starting the dataloader over when it runs out."""
    seen = 0
    while seen < num_batches:
        empty = True
        for batch in dataloader:
            empty = False
            yield batch
            seen += 1
            if seen == num_batches:
                return
        if empty:
            raise ValueError('recalibrate_bn: the dataloader yields no batches')


def _gated_blocks(model: nn.Module) -> List[nn.Module]:
    from mmmod.models.layers.gumbel_gate import GatedBlockMixin
    return [m for m in model.modules() if isinstance(m, GatedBlockMixin)]


def recalibrate_bn(model: nn.Module,
                   dataloader: Iterable,
                   num_batches: int = 200,
                   gate_mode: str = 'train',
                   progress: bool = True) -> Dict[str, int]:
    """Re-estimate the running statistics of ``model``'s trainable-state BN layers.

    Args:
        model (nn.Module): an OpenMMLab ``BaseModel`` (its ``data_preprocessor`` prepares each
            batch as in training, then ``model(..., mode='loss')`` runs); changed in place:
            BN running statistics only. Left in eval mode.
        dataloader (Iterable): training batches (collated dicts).
        num_batches (int): forward passes. Default 200 (paper).
        gate_mode (str): ``'train'`` or ``'inference'``, see the module docstring.
        progress (bool): show mmengine's progress bar.

    Returns:
        dict: ``num_batches`` run and ``num_bn`` layers recalibrated.
    """
    if gate_mode not in GATE_MODES:
        raise ValueError(f'gate_mode must be one of {list(GATE_MODES)}, got {gate_mode!r}')
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f'num_batches must be an int >= 1, got {num_batches!r}')
    model.train()  # re-applies norm_eval / frozen stages: those BN layers stay frozen
    bns = [m for m in model.modules()
           if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    if not bns:
        raise ValueError(f'{type(model).__name__} has no BatchNorm layer in training mode '
                         f'(all frozen by norm_eval / frozen_stages?): nothing to recalibrate')
    if gate_mode == 'inference':
        for block in _gated_blocks(model):
            block.training = False  # only the gate sampling reads it; its BN children train
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
    bar = ProgressBar(num_batches) if progress else None
    try:
        with torch.no_grad():
            for k, batch in enumerate(_batches(dataloader, num_batches)):
                for bn in bns:
                    bn.momentum = 1.0 / (k + 1)  # cumulative average over the k + 1 batches
                data = model.data_preprocessor(batch, True)
                if isinstance(data, dict):
                    model(**data, mode='loss')
                else:
                    model(*data, mode='loss')
                if bar is not None:
                    bar.update()
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
    if bar is not None:
        print()
    return dict(num_batches=num_batches, num_bn=len(bns))
