"""Drives dynamic channel execution (Spasov & Lio, Alg. 1) in mmengine's training loop."""
from typing import Dict, List, Optional

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmmod.registry import HOOKS

__all__ = ['ChannelBanditHook', 'bandit_backbones', 'summed_over_ranks']


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
            the untried arms every this many iterations.
    """

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
            if self._fixed(runner):
                masks = backbone.fixed_masks()
                backbone.begin_bandit_step(masks)
            else:
                masks = backbone.begin_bandit_step()
            self._masks[id(backbone)] = masks
            if backbone.freeze_inactive:
                self._saved[id(backbone)] = _snapshot(backbone.frozen_entries(masks), optimizer)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        optimizer = runner.optim_wrapper.optimizer
        for backbone in bandit_backbones(runner.model):
            saved = self._saved.pop(id(backbone), None)
            if saved is not None:
                _restore(saved, optimizer)
            if self._fixed(runner):
                backbone.end_bandit_step(observe=False)
                continue
            backbone.end_bandit_step(summed_over_ranks(backbone.step_saliencies()))
            if self.every_n_train_iters(runner, self.log_interval):
                for key, value in backbone.bandit_log(self._masks[id(backbone)]).items():
                    runner.message_hub.update_scalar(f'train/bandit_{key}', value)


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
