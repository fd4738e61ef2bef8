"""Hooks for gated backbones (Herrmann et al., "End-to-end channel gating"): the target rate of
the batch activation loss over training, and the gates' statistics in logs and metrics.

Both find the backbone with :func:`mmmod.engine.gated_model.find_gated_backbone` (the model
may be wrapped by DDP or a TTA wrapper) and talk to it only through its documented side
outputs: ``backbone.gate_loss.target`` (the loss's target rate t), ``backbone.gate_stats``
(the last forward's statistics, python floats) and ``backbone.gate_loss_grad_scale``.

Example:
    >>> # in any mmpretrain / mmseg / mmdet config with a gated backbone
    >>> custom_hooks = [
    ...     dict(type='GateTargetHook', policy='step', start=1.0, step=0.05, interval=5),
    ...     dict(type='GateStatsHook')]
"""
from typing import Dict, Optional

import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmmod.engine.gated_model import find_gated_backbone
from mmmod.registry import HOOKS

POLICIES = ('step', 'variable')
AVERAGES = ('ema', 'mean')
STATISTICS = ('auto', 'gate_rate', 'gate_flops_ratio')
# The loss whose target is a FLOPs ratio: its variable target follows the FLOPs ratio.
FLOPS_LOSSES = ('FLOPsActivationLoss', )
METRIC_PREFIX = 'gate'


def _gate_loss(backbone):
    loss = getattr(backbone, 'gate_loss', None)
    if loss is None:
        raise ValueError(f'{type(backbone).__name__} has no gate loss to set a target on; '
                         f'configure one, e.g. gate_loss=dict(type="BatchActivationLoss", '
                         f'target=0.5)')
    return loss


@HOOKS.register_module()
class GateTargetHook(Hook):
    """Change the target rate t of the gated backbone's activation loss during training.

    Two policies (paper, supplementary S1.1 and S1.2):

    - ``'step'`` -- annealing: t = max(end, start - step * floor(progress / interval)), where
      progress is the epoch (``by_epoch=True``) or the iteration. The paper's typical values
      are step a = 0.05 every k = 5 epochs; its CIFAR runs anneal 1.0, .95, .9, .85, .8. The
      target is a function of the progress only, so a resumed run continues the schedule.
    - ``'variable'`` -- variable target rate: at the start of every ``interval`` (epochs or
      iterations) t restarts from ``start`` (so it cannot collapse to 1), then follows the
      measured activation of each training batch: ``'ema'``
      t <- momentum * t + (1 - momentum) * rate, or ``'mean'``, the running mean of ``start``
      and the rates seen since the restart.

    The target in effect is logged as ``gate_target`` every iteration.

    Args:
        policy (str): ``'step'`` or ``'variable'``.
        start (float): the first target (step), the restart value (variable). Default 1.0.
        end (float, optional): step's floor; None takes the target the loss was configured
            with (so ``gate_loss=dict(target=0.5)`` anneals down to 0.5). Ignored by
            ``'variable'``.
        step (float): what each step subtracts. Default 0.05 (paper).
        interval (int, optional): epochs/iterations per step (default 5, paper) or between
            restarts (default 1).
        by_epoch (bool): count ``interval`` in epochs (EpochBasedTrainLoop) or iterations
            (IterBasedTrainLoop, as in mmseg's and some mmdet recipes).
        average (str): variable policy update, ``'ema'`` or ``'mean'``.
        momentum (float): the EMA's weight of the old target, in [0, 1).
        statistic (str): what the variable target follows: ``'gate_rate'`` (mean gate),
            ``'gate_flops_ratio'``, or ``'auto'`` -- the FLOPs ratio for a
            ``FLOPsActivationLoss``, the gate rate otherwise.
    """
    priority = 'NORMAL'  # before LoggerHook (BELOW_NORMAL) reads the message hub

    def __init__(self,
                 policy: str = 'step',
                 start: float = 1.0,
                 end: Optional[float] = None,
                 step: float = 0.05,
                 interval: Optional[int] = None,
                 by_epoch: bool = True,
                 average: str = 'ema',
                 momentum: float = 0.99,
                 statistic: str = 'auto'):
        if policy not in POLICIES:
            raise ValueError(f'GateTargetHook: policy must be one of {list(POLICIES)}, '
                             f'got {policy!r}')
        if average not in AVERAGES:
            raise ValueError(f'GateTargetHook: average must be one of {list(AVERAGES)}, '
                             f'got {average!r}')
        if statistic not in STATISTICS:
            raise ValueError(f'GateTargetHook: statistic must be one of {list(STATISTICS)}, '
                             f'got {statistic!r}')
        for name, value in (('start', start), ('end', end)):
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f'GateTargetHook: {name} must be a rate in [0, 1], '
                                 f'got {value!r}')
        if step < 0:
            raise ValueError(f'GateTargetHook: step must be >= 0, got {step!r}')
        if not 0 <= momentum < 1:
            raise ValueError(f'GateTargetHook: momentum must be in [0, 1), got {momentum!r}')
        if interval is None:
            interval = 5 if policy == 'step' else 1
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f'GateTargetHook: interval must be an int >= 1, got {interval!r}')
        if policy == 'step' and end is not None and end > start:
            raise ValueError(f'GateTargetHook: step annealing goes down from start={start} to '
                             f'end={end}; end must be <= start')
        self.policy = policy
        self.start = start
        self.end = end
        self.step = step
        self.interval = interval
        self.by_epoch = by_epoch
        self.average = average
        self.momentum = momentum
        self.statistic = statistic
        self._end: Optional[float] = None
        self._seen = 0  # batches since the last restart (variable, 'mean')

    # -- the schedule -------------------------------------------------------------------------
    def target_at(self, progress: int) -> float:
        """The step policy's target after ``progress`` epochs or iterations."""
        floor = self.end if self.end is not None else self._end
        if floor is None:
            raise RuntimeError('GateTargetHook.target_at needs end, or before_train to have '
                               'read the loss target')
        if floor > self.start:
            raise ValueError(f'GateTargetHook: the gate loss target {floor} (the annealing '
                             f'floor) is above start={self.start}; set start >= the target')
        return max(floor, self.start - self.step * (progress // self.interval))

    def _set(self, runner, value: float) -> None:
        _gate_loss(find_gated_backbone(runner.model)).target = float(value)

    def _statistic_key(self, backbone) -> str:
        if self.statistic != 'auto':
            return self.statistic
        is_flops = type(_gate_loss(backbone)).__name__ in FLOPS_LOSSES
        return 'gate_flops_ratio' if is_flops else 'gate_rate'

    # -- hook points --------------------------------------------------------------------------
    def before_train(self, runner) -> None:
        loss = _gate_loss(find_gated_backbone(runner.model))
        if self._end is None:  # the configured target, read before the hook changes it
            self._end = float(loss.target)

    def _progress(self, runner) -> int:
        return runner.epoch if self.by_epoch else runner.iter

    def before_train_epoch(self, runner) -> None:
        if self.by_epoch:
            self._restart_or_step(runner)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self.by_epoch:
            self._restart_or_step(runner)

    def _restart_or_step(self, runner) -> None:
        progress = self._progress(runner)
        if self.policy == 'step':
            self._set(runner, self.target_at(progress))
        elif progress % self.interval == 0 or self._seen == 0:
            self._set(runner, self.start)
            self._seen = 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        backbone = find_gated_backbone(runner.model)
        loss = _gate_loss(backbone)
        runner.message_hub.update_scalar('train/gate_target', float(loss.target))
        if self.policy != 'variable':
            return
        rate = backbone.gate_stats[self._statistic_key(backbone)]
        self._seen += 1
        if self.average == 'ema':
            loss.target = self.momentum * loss.target + (1 - self.momentum) * rate
        else:  # running mean of start and the self._seen rates since the restart
            loss.target = loss.target + (rate - loss.target) / (self._seen + 1)


@HOOKS.register_module()
class GateStatsHook(Hook):
    """Gate statistics in the training log and in the validation/test metrics.

    - Training: every iteration, the keys of ``backbone.gate_stats`` (``gate_rate``,
      ``gate_flops_ratio``, ``gated_gflops``, ``gate_net_gflops``, ``gate_loss``) go to the
      message hub, so ``LoggerHook`` prints them and writes them to ``scalars.json``.
    - Validation/test: the statistics of every forward pass of the backbone over the set are
      averaged (weighted by images; summed over ranks) and added to the metrics, the way
      :class:`~mmmod.engine.hooks.LatencyHook` adds its keys:

      - ``gate/rate``: mean gate value (learned gates; always-on groups excluded),
      - ``gate/flops_ratio``: FLOPs of the gated blocks / FLOPs with all gates on,
      - ``gate/gated_gflops``: expected conv GFLOPs per image of the gated blocks,
      - ``gate/gate_net_gflops``: GFLOPs per image of the gate networks,
      - ``gate/gflops``: the sum of the two -- what gating decides. The un-gated rest of the
        network (stem, neck, heads) is not in it; ``tools/analysis/get_flops.py`` reports the
        whole network's expected GFLOPs.

      Every forward counts: under a TTA wrapper (the stochastic ensemble) these are per pass.
    - Mixed precision and gradient accumulation: the backbone injects the gate loss's
      gradient in the backward pass itself, so it must be scaled like the main loss. Before
      every training iteration this hook sets ``backbone.gate_loss_grad_scale`` to the AMP
      loss scale times mmengine's accumulation factor (``optim_wrapper.scale_loss`` of 1).

    Args:
        on_val (bool): also add the metrics after validation. Default True.
        log_train (bool): log the statistics every training iteration. Default True.
    """
    # Before RuntimeInfoHook (VERY_HIGH) copies the metrics to the message hub for LoggerHook.
    priority = 'HIGHEST'
    SUMMED = ('gate_rate', 'gate_flops_ratio', 'gated_gflops', 'gate_net_gflops')

    def __init__(self, on_val: bool = True, log_train: bool = True):
        self.on_val = on_val
        self.log_train = log_train
        self._handle = None
        self._sums: Dict[str, float] = {}
        self._images = 0

    # -- training -----------------------------------------------------------------------------
    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        backbone = find_gated_backbone(runner.model)
        if getattr(backbone, 'gate_loss', None) is not None:
            backbone.gate_loss_grad_scale = self.grad_scale(runner.optim_wrapper)

    @staticmethod
    def grad_scale(optim_wrapper) -> float:
        """What the main loss's gradient is multiplied by in ``optim_wrapper``'s backward: the
        AMP loss scale divided by the gradient accumulation factor."""
        if not hasattr(optim_wrapper, 'scale_loss'):  # OptimWrapperDict: several optimizers
            wrappers = list(getattr(optim_wrapper, 'optim_wrappers', {}).values())
            if all(getattr(w, '_accumulative_counts', 1) == 1
                   and getattr(w, 'loss_scaler', None) is None for w in wrappers):
                return 1.0
            raise ValueError(
                'GateStatsHook: with several optimizers (OptimWrapperDict), AMP or gradient '
                'accumulation would scale the gate loss differently from the losses each '
                'optimizer steps on; use one OptimWrapper/AmpOptimWrapper, or accumulative_counts'
                '=1 and no AMP')
        scaler = getattr(optim_wrapper, 'loss_scaler', None)
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        # mmengine divides the loss by the accumulation count (less in a last, short window)
        return scale * float(optim_wrapper.scale_loss(torch.ones(())))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.log_train:
            return
        stats = find_gated_backbone(runner.model).gate_stats
        for key, value in stats.items():
            runner.message_hub.update_scalar(f'train/{key}', float(value))

    # -- validation / test --------------------------------------------------------------------
    def _start(self, runner) -> None:
        self._stop()
        backbone = find_gated_backbone(runner.model)
        self._sums = {key: 0.0 for key in self.SUMMED}
        self._images = 0

        def accumulate(module, args, output):
            # deep copies of the model (LatencyHook's replica) carry this hook: count only
            # the model under test
            if module is not backbone:
                return
            n = int(args[0].shape[0])
            stats = module.gate_stats
            for key in self.SUMMED:
                self._sums[key] += float(stats[key]) * n
            self._images += n

        self._handle = backbone.register_forward_hook(accumulate)

    def _stop(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _report(self, runner, metrics: Optional[Dict[str, float]]) -> None:
        self._stop()
        totals = torch.tensor([*(self._sums[key] for key in self.SUMMED), self._images],
                              dtype=torch.float64)
        all_reduce(totals)  # a no-op without distributed training
        images = float(totals[-1])
        if images == 0:
            print_log('GateStatsHook: the backbone ran on no images; no gate metrics.',
                      'current', level=30)
            return
        mean = dict(zip(self.SUMMED, (float(v) / images for v in totals[:-1])))
        gate = {
            f'{METRIC_PREFIX}/rate': mean['gate_rate'],
            f'{METRIC_PREFIX}/flops_ratio': mean['gate_flops_ratio'],
            f'{METRIC_PREFIX}/gated_gflops': mean['gated_gflops'],
            f'{METRIC_PREFIX}/gate_net_gflops': mean['gate_net_gflops'],
            f'{METRIC_PREFIX}/gflops': mean['gated_gflops'] + mean['gate_net_gflops'],
        }
        if metrics is not None:
            metrics.update(gate)
        print_log('GateStatsHook over %d images: %s' % (
            images, ', '.join(f'{k}={v:.4f}' for k, v in gate.items())), 'current')

    def before_test_epoch(self, runner) -> None:
        self._start(runner)

    def after_test_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        self._report(runner, metrics)

    def before_val_epoch(self, runner) -> None:
        if self.on_val:
            self._start(runner)

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        if self.on_val:
            self._report(runner, metrics)
