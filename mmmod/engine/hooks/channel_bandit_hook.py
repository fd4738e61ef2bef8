"""Drives dynamic channel execution (Spasov & Lio, Alg. 1) in mmengine's training loop."""
import json
import os.path as osp
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmmod.registry import HOOKS

__all__ = ['ChannelBanditHook', 'bandit_backbones', 'begin_step', 'end_step',
           'summed_over_ranks']


def bandit_backbones(model) -> List[torch.nn.Module]:
    """The modules of ``model`` that a channel bandit drives (``BanditResNet``, ...)."""
    model = model.module if is_model_wrapper(model) else model
    return [m for m in model.modules() if hasattr(m, 'begin_bandit_step')]


@HOOKS.register_module()
class ChannelBanditHook(Hook):
    """Select each training step's channels before it, observe them after it.

    Before a step every bandit backbone selects its super-arm (UCB, Alg. 1 steps 7-9) and, with
    ``freeze_inactive``, the hook notes what the inactive channels hold (weights, norm
    statistics, optimizer state). After the optimizer step those entries are put back, the
    saliencies left by backward are summed over ranks (before the absolute value: the batch is
    split across ranks) and the bandit is updated (step 11). The bandit's state is in the
    model's buffers, so checkpoints carry it and ``--resume`` continues with it.

    Args:
        fix_at_epoch (int, optional): single-stage training (the paper's Table 2): from this
            epoch on the topology is fixed by mean saliency (Alg. 1 step 12) and the same model
            trains on. None: explore until the end (then export and fine-tune).
        log_interval (int): log the active fraction per stage, the exploration bonus range and
            the untried arms every this many iterations, and append the active fraction of
            every arm layer to ``WORK_DIR/bandit_history.jsonl`` (one JSON object a line:
            ``iter``, ``layers`` (``site/position`` names), ``active`` (fractions), ``untried``;
            ``tools/analysis/plot_dce.py`` plots it). A resumed run appends to the same file.
    """

    history_file = 'bandit_history.jsonl'

    priority = 'ABOVE_NORMAL'  # select before other hooks look at the step

    def __init__(self, fix_at_epoch: Optional[int] = None, log_interval: int = 50):
        if fix_at_epoch is not None and (not isinstance(fix_at_epoch, int) or fix_at_epoch < 0):
            raise ValueError(f'fix_at_epoch must be None or an int >= 0, got {fix_at_epoch!r}')
        self.fix_at_epoch = fix_at_epoch
        self.log_interval = log_interval
        self._saved: Dict[int, tuple] = {}
        self._masks: Dict[int, list] = {}

    def before_run(self, runner) -> None:
        if not bandit_backbones(runner.model):
            raise TypeError('ChannelBanditHook found no bandit backbone (e.g. BanditResNet) in '
                            f'{type(runner.model).__name__}')

    def _fixed(self, runner) -> bool:
        return self.fix_at_epoch is not None and runner.epoch >= self.fix_at_epoch

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        optimizer = runner.optim_wrapper.optimizer
        for backbone in bandit_backbones(runner.model):
            fixed = backbone.fixed_masks() if self._fixed(runner) else None
            self._masks[id(backbone)], self._saved[id(backbone)] = begin_step(
                backbone, optimizer, fixed)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        optimizer = runner.optim_wrapper.optimizer
        for backbone in bandit_backbones(runner.model):
            observe = not self._fixed(runner)
            end_step(backbone, optimizer, self._saved.pop(id(backbone), None), observe)
            if observe and self.every_n_train_iters(runner, self.log_interval):
                masks = self._masks[id(backbone)]
                for key, value in backbone.bandit_log(masks).items():
                    runner.message_hub.update_scalar(f'train/bandit_{key}', value)
                if is_main_process():  # every rank selects the same channels
                    self._append_history(runner, backbone, masks)

    def _append_history(self, runner, backbone, masks) -> None:
        record = dict(iter=runner.iter + 1,
                      layers=[f'{arm.site}/{arm.position}' for arm in backbone.arms],
                      active=[round(float(m.float().mean()), 6) for m in masks],
                      untried=backbone.bandit.untried)
        with open(osp.join(runner.work_dir, self.history_file), 'a') as f:
            f.write(json.dumps(record) + '\n')


def begin_step(backbone, optimizer, masks: Optional[list] = None) -> Tuple[list, list]:
    """Before a training step (Alg. 1 steps 7-9): select the step's channels (or run the fixed
    ``masks``) and, with ``freeze_inactive``, note what the inactive channels hold.

    Returns:
        (the step's masks, one (C,) bool mask per arm layer; the noted entries or None).
    """
    masks = backbone.begin_bandit_step(masks)
    saved = _snapshot(backbone.frozen_entries(masks), optimizer) \
        if backbone.freeze_inactive else None
    return masks, saved


def end_step(backbone, optimizer, saved: Optional[list], observe: bool = True) -> None:
    """After the optimizer step: put the inactive channels' entries back, then observe the
    saliencies backward left, summed over ranks (Alg. 1 step 11; ``observe=False``: a fixed
    topology's step)."""
    if saved is not None:
        _restore(saved, optimizer)
    if observe:
        backbone.end_bandit_step(summed_over_ranks(backbone.step_saliencies()))
    else:
        backbone.end_bandit_step(observe=False)


def summed_over_ranks(raw: List[torch.Tensor]) -> List[torch.Tensor]:
    """Per-layer signed raw saliencies summed over all ranks (each holds part of the batch),
    so that every rank observes the same values and selects the same channels."""
    if get_world_size() == 1:
        return raw
    flat = torch.cat(raw)  # (A,) signed: summed before the absolute value
    all_reduce(flat, op='sum')
    return list(flat.split([r.numel() for r in raw]))


def _snapshot(frozen: Dict[int, tuple], optimizer) -> list:
    """Copies of the frozen tensors and of their optimizer state tensors of the same shape."""
    saved = []
    for tensor, mask in frozen.values():
        state = optimizer.state.get(tensor, {}) if isinstance(tensor, torch.nn.Parameter) else {}
        saved.append((tensor, mask, tensor.detach().clone(),
                      {k: v.detach().clone() for k, v in state.items()
                       if torch.is_tensor(v) and v.shape == tensor.shape}))
    return saved


@torch.no_grad()
def _restore(saved: list, optimizer) -> None:
    """Put back the frozen entries; optimizer state the step created there starts at 0 (the
    sub-network that trained never had it)."""
    for tensor, mask, before, state_before in saved:
        tensor.copy_(torch.where(mask, before, tensor))
        state = optimizer.state.get(tensor, {}) if isinstance(tensor, torch.nn.Parameter) else {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == tensor.shape:
                old = state_before.get(key)
                value.copy_(torch.where(mask, torch.zeros_like(value) if old is None else old,
                                        value))
