"""Side-by-side latency of classifiers in one process: interleaved repeats, ratios with spread.

Timing follows the CNN-MoD paper (``torch.utils.benchmark``, batch 1, 224x224). Every model is
measured once per round, the order rotating between rounds, so drift of the machine (thermal,
other load) hits all models alike; ratios are taken within a round and then summarised
(median and inter-quartile range over rounds).
"""
import copy
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils import benchmark

from mmmod.models.backbones.base import MOD_DEPTHS

# name -> backbone config of an ImageNet classifier (GAP neck + linear head, as mmpretrain's)
PRESETS: Dict[str, dict] = {
    'resnet50': dict(type='ResNet', depth=50),
    'resnet101': dict(type='ResNet', depth=101),
    'resnet152': dict(type='ResNet', depth=152),
    **{f'resnet{d}-mod': dict(type='ResNetMoD', depth=d) for d in MOD_DEPTHS},
    'resnet18': dict(type='ResNet', depth=18),
    'resnet34': dict(type='ResNet', depth=34),
    'mobilenetv2': dict(type='MobileNetV2'),
    'mobilenetv2-mod': dict(type='MobileNetV2MoD', arch='MoD'),
    'mobilenetv2-mod-l': dict(type='MobileNetV2MoD', arch='MoD-L'),
}

# The paper's speed-up claims: model -> (baseline, CPU speed-up reported in Tables 1-2)
PAPER_CPU_SPEEDUPS = {
    'resnet50-mod': ('resnet50', 1.48),
    'resnet75-mod': ('resnet50', 1.25),
    'resnet86-mod': ('resnet50', 1.06),
    'resnet101-mod': ('resnet101', 1.55),
    'mobilenetv2-mod': ('mobilenetv2', 1.43),
    'mobilenetv2-mod-l': ('mobilenetv2', 1.11),
}


def build_classifier(name_or_cfg, num_classes: int = 1000) -> nn.Module:
    """An mmpretrain ``ImageClassifier`` around a preset name or a backbone config."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    import mmmod  # noqa: F401  registers the backbones
    backbone = copy.deepcopy(PRESETS[name_or_cfg] if isinstance(name_or_cfg, str)
                             else name_or_cfg)
    # mmpretrain's scope, whatever scope an earlier Runner left current
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        # Output width of the last stage, found by building the backbone once.
        probe = MODELS.build(copy.deepcopy(backbone))
        probe.eval()  # upstream train() overrides return None: don't chain
        with torch.no_grad():
            feat = probe(torch.zeros(1, 3, 64, 64))[-1]
        return MODELS.build(dict(
            type='ImageClassifier', backbone=backbone, neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=num_classes,
                      in_channels=feat.shape[1], loss=dict(type='CrossEntropyLoss'))))


def strip_mod_blocks(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every MoD block replaced by the identity: the zero-cost ceiling
    of MoD, i.e. how fast the network would be if its MoD blocks cost nothing."""
    from mmmod.models.layers import MoDBlock
    model = copy.deepcopy(model)
    names = [n for n, m in model.named_modules() if isinstance(m, MoDBlock)]
    for name in names:
        parent_name, _, child = name.rpartition('.')
        setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())
    return model


@dataclass
class Timing:
    """Per-round times (seconds per call) of one candidate."""
    name: str
    rounds: List[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.rounds) * 1e3


def quartiles(values: Sequence[float]):
    """(median, 25th percentile, 75th percentile)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method='inclusive')
    return q[1], q[0], q[2]


def time_interleaved(fns: Dict[str, Callable[[], object]], rounds: int = 10,
                     min_time: float = 0.2, num_threads: Optional[int] = None,
                     progress: bool = True) -> Dict[str, Timing]:
    """Time callables side by side: ``rounds`` rounds, each calling every fn ``number`` times.

    ``number`` is fixed per fn from a warm-up so one measurement takes about ``min_time`` s.
    """
    num_threads = num_threads or torch.get_num_threads()
    timers = {name: benchmark.Timer(stmt='fn()', globals=dict(fn=fn), num_threads=num_threads,
                                    label=name) for name, fn in fns.items()}
    numbers = {}
    for name, timer in timers.items():
        timer.timeit(2)  # warm-up: allocator, lazy init, caches
        once = timer.timeit(3).median
        numbers[name] = max(1, int(min_time / max(once, 1e-6)))
    results = {name: Timing(name) for name in fns}
    names = list(fns)
    bar = None
    if progress:
        from mmengine.utils import ProgressBar
        bar = ProgressBar(rounds * len(names))
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate to spread drift
        for name in order:
            results[name].rounds.append(timers[name].timeit(numbers[name]).median)
            if bar is not None:
                bar.update()
    if bar is not None:
        print()
    return results


def ratio_stats(num: Timing, den: Timing):
    """Per-round ``num / den`` (e.g. baseline time / model time = speed-up): quartiles."""
    return quartiles([a / b for a, b in zip(num.rounds, den.rounds)])


def build_model(spec: str, cpu_norms: bool = True) -> nn.Module:
    """A preset classifier name (:data:`PRESETS`) or any mmpretrain / mmseg / mmdet config file.

    ``cpu_norms`` turns SyncBN into BN (SyncBN cannot train on CPU); weights stay initial
    (no ``init_weights``, so no checkpoint is needed).
    """
    if spec in PRESETS:
        return build_classifier(spec)
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    import mmmod  # noqa: F401
    from mmmod.compat import revert_sync_bn_cfg
    cfg = Config.fromfile(spec)
    scope = cfg.get('default_scope', 'mmpretrain')
    model_cfg = revert_sync_bn_cfg(cfg.model) if cpu_norms else cfg.model
    with DefaultScope.overwrite_default_scope(scope):
        registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
        return registry.build(model_cfg)


def step_fns(model: nn.Module, device: str, shape, batch_size: int = 1) -> dict:
    """``{'inference': fn, 'train': fn}`` on a copy of ``model`` moved to ``device``:
    ``predict`` on a preprocessed random batch, and forward + backward of the ``loss``."""
    from .batches import random_batch
    model = copy.deepcopy(model).to(device)
    batch = random_batch(model, batch_size, shape)
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(copy.deepcopy(batch), False)
        train_data = model.data_preprocessor(copy.deepcopy(batch), True)

    def inference():
        model.eval()
        with torch.no_grad():
            return model(**data, mode='predict')

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        loss, _ = model.parse_losses(model(**train_data, mode='loss'))
        loss.backward()

    return dict(inference=inference, train=train)


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def _peak_rss_child(spec, device, shape, batch_size, mode, queue):
    torch.set_num_threads(1)
    fn = step_fns(build_model(spec), device, shape, batch_size)[mode]
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak resident set (VmHWM) to the current one
    before = _status_kib('VmRSS')
    fn()
    queue.put((_status_kib('VmHWM') - before) / 1024)  # KiB -> MiB


def peak_memory_mb(spec: str, device: str, shape, batch_size: int, mode: str) -> float:
    """Peak memory of one ``mode`` pass (MiB): on CUDA ``max_memory_allocated``; on CPU how far
    the resident memory of a fresh process that built the model rises during its first pass
    (Linux ``VmHWM`` after resetting it, minus ``VmRSS`` before the pass)."""
    if device.startswith('cuda'):
        fn = step_fns(build_model(spec), device, shape, batch_size)[mode]
        fn()  # warm-up, lazy allocations
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    import multiprocessing as mp
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_rss_child, args=(spec, device, shape, batch_size, mode, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f'measuring the peak memory of {spec} ({mode}) failed')
    return queue.get()
