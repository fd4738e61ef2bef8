"""Dynamic channel execution, training cost: a bandit step with the thin sub-network vs the
paper's masked network vs the plain baseline, side by side (the logic behind
tools/benchmark_dce.py).

Spasov & Lio (Sec. 2.1) run every training step of dynamic channel execution on the full
network with the inactive outputs multiplied by 0 (``execution='masked'``) and note that
computing only the active channels -- what ``execution='thin'`` does -- is what would lower
the cost of training. This measures whether it does, for one whole training step as
:class:`~mmmod.engine.hooks.ChannelBanditHook` runs it::

    select (UCB, Alg. 1 steps 7-9) -> note the inactive entries (freeze_inactive) ->
    forward + backward of the loss -> SGD (Nesterov momentum, weight decay) step ->
    put the inactive entries back -> observe the saliencies (step 11)

against the same step of mmpretrain's plain network (no bandit, no hook work). Per model and
active ratio p:

- **time**: :func:`mmmod.analysis.benchmark.time_interleaved` -- baseline, masked and thin in
  interleaved rounds of short measurements in one process, ratios per round, median and
  inter-quartile range. Every timed call is a real step: the bandit selects and updates, so the
  selection moves as in training. Before timing, each bandit runs ``ceil(1 / p)`` steps (with
  ``init='untried'`` each of them tries arms never active so far, :class:`ChannelBandit`) and
  :data:`STEADY_STEPS` more, so the timed steps select by UCB (steady state).
- **MACs ratio**: forward MACs of the baseline / forward MACs of the active sub-network, both
  counted by mmengine's ``FlopAnalyzer`` (:func:`mmmod.analysis.complexity.complexity`, the
  'paper' convention: convs, norms, ReLUs, pooling, the head) -- the sub-network's on the thin
  forward at the selections of timed steps (the mean over ``macs_samples`` of them; the count
  does not depend on the batch). ``thin speed-up / MACs ratio`` is the share of the MACs
  saving that the thin step turns into time (1.0: time proportional to MACs).
- **saved activations**: the bytes autograd saves for backward during the step's forward
  (``torch.autograd.graph.saved_tensors_hooks``, distinct storages, parameters' own storages
  left out: they exist anyway). That is the training memory that grows with the batch,
  measured on one steady-state step per network; it is not the process's peak resident
  memory. The thin step also saves the weight slices it gathers for the step; they are
  counted apart (``weight_copies_mb``): at a small batch they can outweigh the activations.
"""
import contextlib
import copy
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmmod.engine.hooks.channel_bandit_hook import bandit_backbones, begin_step, end_step
from .benchmark import Timing, build_classifier, ratio_stats, time_interleaved
from .benchmark_pix import fmt
from .complexity import complexity

# name -> the bandit backbone, its baseline (mmpretrain's plain network) and the step's input:
# ``bandit`` takes ``ratio`` and ``execution`` on top.
DCE_MODELS: Dict[str, dict] = {
    # the paper's CIFAR / SVHN setting (Sec. 3.1, 3.3): 32x32, batch 64
    'resnet50-cifar': dict(bandit=dict(type='BanditResNet', depth=50),
                           baseline=dict(type='ResNet', depth=50),
                           batch_size=64, input_size=32, num_classes=10),
    # ImageNet-sized inputs, the batch a CPU holds
    'resnet50-224': dict(bandit=dict(type='BanditResNet', depth=50),
                         baseline=dict(type='ResNet', depth=50),
                         batch_size=8, input_size=224, num_classes=1000),
    # the paper's VGG-19 (configs/dce/_base_/models/vgg19bn.py): BN, bias-free convs, one FC
    'vgg19-cifar': dict(bandit=dict(type='BanditVGG', depth=19, norm_cfg=dict(type='BN'),
                                    conv_cfg=dict(type='BiasFreeConv2d')),
                        baseline=dict(type='VGG', depth=19, norm_cfg=dict(type='BN'),
                                      conv_cfg=dict(type='BiasFreeConv2d'), num_classes=-1),
                        batch_size=64, input_size=32, num_classes=10),
}
DEFAULT_RATIOS = (0.3, 0.5, 0.7)
CANDIDATES = ('baseline', 'masked', 'thin')
EXECUTIONS = ('masked', 'thin')
# UCB steps after the initialisation round, before timing
STEADY_STEPS = 2
# Spasov & Lio Sec. 3.3: SGD, Nesterov momentum 0.9, weight decay 1e-4. The learning rate does
# not change a step's cost; 0.01 rather than the paper's 0.1 keeps hundreds of steps on random
# data finite.
SGD_CFG = dict(lr=0.01, momentum=0.9, dampening=0, nesterov=True, weight_decay=1e-4)


def check_models(models: Sequence[str], table: Mapping[str, dict] = DCE_MODELS) -> None:
    """Raise a ValueError naming the valid choices if a model is not in ``table``."""
    unknown = [m for m in models if m not in table]
    if unknown:
        raise ValueError(f'unknown model(s) {unknown}: choose from {sorted(table)}')


def check_ratio(ratio: float) -> float:
    """``ratio`` as a float, or a ValueError if it is not in (0, 1]."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value <= 1:  # NaN fails too
        raise ValueError(f'the active-channel ratio must be in (0, 1], got {ratio!r}')
    return value


def bandit_available(spec: Mapping) -> Optional[str]:
    """None if the bandit backbone of ``spec`` is registered, else why not (one line)."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    import mmmod  # noqa: F401  registers the backbones
    kind = spec['bandit']['type']
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        if MODELS.get(kind) is None:
            return f'{kind} is not registered'
    return None


class TrainStep:
    """One training step of a classifier, as the runner and ChannelBanditHook run it.

    Args:
        model (nn.Module): an mmpretrain ``ImageClassifier``; a bandit backbone in it gets the
            hook's work (select, freeze / restore the inactive entries, observe).
        x (Tensor): (N, 3, H, W) the step's batch.
        y (Tensor): (N,) its labels.
        sgd_cfg (dict): ``torch.optim.SGD`` arguments (default :data:`SGD_CFG`).

    ``masks_seen`` collects each step's selection (one (C,) bool mask per arm layer) while it
    is a list.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 sgd_cfg: Optional[dict] = None):
        model.train()  # BN in training mode, as in a real step (upstream train() may return None)
        self.model = model
        self.x, self.y = x, y
        self.optimizer = torch.optim.SGD(model.parameters(), **(sgd_cfg or SGD_CFG))
        self.backbones = bandit_backbones(model)
        self.masks_seen: Optional[List[List[torch.Tensor]]] = None

    def __call__(self, forward_ctx: Callable = contextlib.nullcontext) -> float:
        """Run one step (forward under ``forward_ctx()``); returns the loss."""
        steps = []
        for backbone in self.backbones:  # the hook's before_train_iter
            masks, saved = begin_step(backbone, self.optimizer)
            if self.masks_seen is not None:
                self.masks_seen.append(masks)
            steps.append((backbone, saved))
        self.optimizer.zero_grad(set_to_none=True)
        with forward_ctx():
            loss = F.cross_entropy(self.model(self.x, mode='tensor'), self.y)  # (N, K) logits
        loss.backward()
        self.optimizer.step()
        for backbone, saved in steps:  # the hook's after_train_iter
            end_step(backbone, self.optimizer, saved)
        return loss.item()


# autograd nodes a slice of a parameter passes through (the thin step's gathered weights)
_GATHER_NODES = ('IndexSelectBackward0', 'ViewBackward0', 'ExpandBackward0')


def _is_weight_copy(t: torch.Tensor) -> bool:
    """t is a gathered slice of one parameter: its autograd history is a chain of gathers and
    views ending at the parameter (an activation's history runs through the layers' ops)."""
    node = t.grad_fn
    while node is not None:
        kind = type(node).__name__
        if kind == 'AccumulateGrad':
            return True
        nexts = [n for n, _ in node.next_functions if n is not None]
        if kind not in _GATHER_NODES or len(nexts) != 1:
            return False
        node = nexts[0]
    return False


def saved_activation_bytes(step: TrainStep) -> Dict[str, int]:
    """Bytes autograd saves for backward during one training step's forward (runs one real
    step), distinct storages, the parameters' own storages left out: ``activations`` (what
    the layers compute from the batch, and the small index / mask tensors) and
    ``weight_copies`` (gathered slices of parameters: the thin step's per-step weights)."""
    params = {p.untyped_storage().data_ptr() for p in step.model.parameters()}
    seen: Dict[int, tuple] = {}  # storage pointer -> (bytes, kind)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and storage.nbytes() > 0:
            kind = 'weight_copies' if _is_weight_copy(t) else 'activations'
            seen[ptr] = (max(seen.get(ptr, (0, ))[0], storage.nbytes()), kind)
        return t

    step(lambda: torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
    return {kind: sum(n for n, k in seen.values() if k == kind)
            for kind in ('activations', 'weight_copies')}


def active_macs(model: nn.Module, masks: Sequence[torch.Tensor], shape) -> dict:
    """:func:`~mmmod.analysis.complexity.complexity` of the thin forward of the bandit
    classifier ``model`` with its backbone running ``masks`` (one (C,) bool mask per arm
    layer): the MACs of the active sub-network on one (1, 3, H, W) input. ``model`` is not
    modified."""
    model = copy.deepcopy(model)
    (backbone, ) = bandit_backbones(model)
    fixed = [m.clone() for m in masks]
    backbone.execution = 'thin'
    # the analyzer traces in eval, which runs the fixed topology: make it these masks
    backbone.fixed_masks = lambda by='mean': fixed
    backbone._fixed_at = None
    return complexity(model, shape)


def _spread(n: int, k: int) -> List[int]:
    """``k`` indices spread evenly over ``range(n)``, both ends included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]


def _row(name: str, ratio: float, timings: Dict[str, Timing], macs: dict,
         saved: Dict[str, int], num_active: int, num_arms: int) -> dict:
    base = timings['baseline']
    thin_sp = ratio_stats(base, timings['thin'])
    macs_ratio = macs['baseline'] / macs['active_mean']
    return dict(
        model=name, ratio=ratio, num_active=num_active, num_arms=num_arms,
        ms={n: timings[n].median_ms for n in CANDIDATES},
        rounds_s={n: list(timings[n].rounds) for n in CANDIDATES},
        thin_speedup=thin_sp,
        masked_speedup=ratio_stats(base, timings['masked']),
        thin_over_masked=ratio_stats(timings['masked'], timings['thin']),
        macs=macs, macs_ratio=macs_ratio,
        speedup_over_macs_ratio=tuple(q / macs_ratio for q in thin_sp),
        saved_mb={n: saved[n]['activations'] / 2**20 for n in CANDIDATES},
        weight_copies_mb={n: saved[n]['weight_copies'] / 2**20 for n in CANDIDATES},
        saved_thin_over_baseline=saved['thin']['activations'] /
        saved['baseline']['activations'],
        saved_masked_over_baseline=saved['masked']['activations'] /
        saved['baseline']['activations'])


def benchmark_dce(models: Sequence[str] = ('resnet50-cifar', ),
                  ratios: Sequence[float] = DEFAULT_RATIOS, rounds: int = 10,
                  min_time: float = 0.2, threads: Optional[int] = None,
                  table: Mapping[str, dict] = DCE_MODELS, batch_size: Optional[int] = None,
                  input_size: Optional[int] = None, macs_samples: int = 3,
                  progress: bool = True) -> dict:
    """Everything tools/benchmark_dce.py prints, as a dict (see the module docstring).

    Args:
        models (Sequence[str]): names in ``table``.
        ratios (Sequence[float]): active-channel ratios p, each in (0, 1].
        rounds (int), min_time (float), threads (int): as :func:`time_interleaved`.
        table (Mapping): name -> ``dict(bandit=cfg, baseline=cfg, batch_size, input_size,
            num_classes[, module])`` (default :data:`DCE_MODELS`).
        batch_size, input_size (int, optional): override every entry's.
        macs_samples (int): timed steps whose selection's MACs are counted (mean reported).
        progress (bool): mmengine progress bars.

    Returns:
        dict: ``threads``, ``rounds``, ``torch``, ``skipped`` (name -> why), ``settings``
        (name -> batch and input size) and ``rows``, one per (model, ratio): ``ms``
        (candidate -> median ms per step), ``thin_speedup`` / ``masked_speedup`` /
        ``thin_over_masked`` (median, q1, q3), ``macs`` (``baseline``, ``active_mean``, ``active``
        per sampled step, ``counted``), ``macs_ratio``, ``speedup_over_macs_ratio``,
        ``saved_mb`` (candidate -> MiB of saved activations), ``weight_copies_mb``
        (candidate -> MiB of saved weight slices), ``saved_thin_over_baseline``,
        ``saved_masked_over_baseline``, ``rounds_s`` (raw seconds per round).
    """
    check_models(models, table)
    ratios = [check_ratio(r) for r in ratios]
    if not ratios:
        raise ValueError('give at least one active-channel ratio in (0, 1]')
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    result = dict(threads=threads, rounds=rounds, torch=torch.__version__, skipped={},
                  settings={}, rows=[])
    for name in models:
        spec = table[name]
        why = bandit_available(spec)
        if why is not None:
            print(f'skipping {name}: {why}')
            result['skipped'][name] = why
            continue
        bs, size = batch_size or spec['batch_size'], input_size or spec['input_size']
        shape = (size, size)
        result['settings'][name] = dict(batch_size=bs, input_size=size,
                                        bandit=spec['bandit']['type'],
                                        baseline=spec['baseline']['type'])
        g = torch.Generator().manual_seed(0)
        x = torch.randn(bs, 3, *shape, generator=g)  # (N, 3, H, W)
        y = torch.randint(0, spec['num_classes'], (bs, ), generator=g)  # (N,)
        torch.manual_seed(0)
        baseline = build_classifier(spec['baseline'], spec['num_classes'])
        base_macs = complexity(baseline, shape)['macs']
        base_step = TrainStep(baseline, x, y)
        for ratio in ratios:
            steps = {'baseline': base_step}
            for execution in EXECUTIONS:
                torch.manual_seed(0)  # same weights and bandit seed for both executions
                model = build_classifier(dict(spec['bandit'], ratio=ratio, execution=execution),
                                         spec['num_classes'])
                steps[execution] = TrainStep(model, x, y)
            bandit = steps['thin'].backbones[0].bandit
            # initialisation round (untried arms first) + a few UCB steps: then steady state
            warmup = math.ceil(1 / ratio) + STEADY_STEPS
            bar = None
            if progress:
                from mmengine.utils import ProgressBar
                print(f'{name} p={ratio}: {warmup} bandit steps before timing')
                bar = ProgressBar(warmup * len(EXECUTIONS))
            for execution in EXECUTIONS:
                for _ in range(warmup):
                    steps[execution]()
                    if bar is not None:
                        bar.update()
            if bar is not None:
                print()
            saved = {n: saved_activation_bytes(s) for n, s in steps.items()}
            steps['thin'].masks_seen = []
            timings = time_interleaved(steps, rounds, min_time, threads, progress)
            seen, steps['thin'].masks_seen = steps['thin'].masks_seen, None
            sampled = [seen[i] for i in _spread(len(seen), macs_samples)]
            active = [active_macs(steps['thin'].model, m, shape)['macs'] for m in sampled]
            macs = dict(baseline=base_macs, active=active,
                        active_mean=sum(active) / len(active),
                        counted=f'mmengine FlopAnalyzer on the thin forward, mean of '
                                f'{len(active)} timed steps\' selections')
            result['rows'].append(_row(name, ratio, timings, macs, saved, bandit.num_active,
                                       bandit.num_arms))
    return result


def format_report(result: dict) -> str:
    """Markdown table of :func:`benchmark_dce`'s result."""
    lines = [f"## CPU training step (forward + backward + SGD step; bandit: + select, "
             f"freeze / restore, update), {result['threads']} threads, {result['rounds']} "
             f"interleaved rounds, torch {result['torch']}", '']
    for name, s in result['settings'].items():
        lines.append(f"- {name}: {s['bandit']} vs {s['baseline']}, batch {s['batch_size']}, "
                     f"{s['input_size']}x{s['input_size']}")
    for name, why in result['skipped'].items():
        lines.append(f'- {name}: skipped, {why}')
    lines += ['', '| model | p | active / arms | baseline ms | masked ms | thin ms | '
              'thin speed-up [IQR] | masked speed-up [IQR] | MACs ratio | speed-up / MACs ratio '
              '| saved act. MB base / masked / thin | thin / base | thin weight copies MB |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in result['rows']:
        ms, mb = r['ms'], r['saved_mb']
        lines.append(
            f"| {r['model']} | {r['ratio']:g} | {r['num_active']} / {r['num_arms']} | "
            f"{ms['baseline']:.1f} | {ms['masked']:.1f} | {ms['thin']:.1f} | "
            f"{fmt(r['thin_speedup'])} | {fmt(r['masked_speedup'])} | "
            f"{r['macs_ratio']:.2f}x | {r['speedup_over_macs_ratio'][0]:.2f} | "
            f"{mb['baseline']:.1f} / {mb['masked']:.1f} / {mb['thin']:.1f} | "
            f"{r['saved_thin_over_baseline']:.2f} | {r['weight_copies_mb']['thin']:.1f} |")
    lines += [
        '', 'speed-up: baseline time / time, per round, median [inter-quartile range]. '
        'MACs ratio: forward MACs of the baseline / of the active sub-network, both by '
        "mmengine's FlopAnalyzer ('paper' convention), the sub-network's on the thin forward "
        'at timed steps\' selections (mean). speed-up / MACs ratio: the target is >= 0.8. '
        'saved act.: bytes autograd saves for backward in one step\'s forward (distinct '
        'storages, parameters excluded), i.e. activation memory, not peak RSS; the thin '
        "step's gathered weight slices, also saved, are the last column."]
    return '\n'.join(lines)


__all__ = ['benchmark_dce', 'format_report', 'TrainStep', 'saved_activation_bytes',
           'active_macs', 'bandit_available', 'check_models', 'check_ratio', 'DCE_MODELS',
           'DEFAULT_RATIOS', 'SGD_CFG']
