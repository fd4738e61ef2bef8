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

# name -> backbone config of an ImageNet classifier (GAP neck + linear head, as mmpretrain's)
PRESETS: Dict[str, dict] = {
    'resnet50': dict(type='ResNet', depth=50),
    'resnet101': dict(type='ResNet', depth=101),
    'resnet152': dict(type='ResNet', depth=152),
    **{f'resnet{d}-mod': dict(type='ResNetMoD', depth=d)
       for d in (18, 26, 34, 42, 50, 75, 86, 101, 152)},
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
