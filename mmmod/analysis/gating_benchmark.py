"""Channel gating on real hardware: side-by-side CPU latency of what masking, pruning and the
batch-1 active-channel path cost (the logic behind tools/benchmark_gating.py).

Masking multiplies gated-off channels by 0 after computing them, so a gated network is never
faster than the plain one. Two ways turn gates into speed:

- data-independent gates: :func:`mmmod.analysis.pruning.prune_model` exports a PrunedResNet
  (the filters are gone);
- data-dependent gates at batch 1:
  :func:`mmmod.models.layers.active_channels.active_channel_inference` runs each conv on the
  active channels only.

No trained gated weights ship with mmmod, so :func:`set_gate_sparsity` switches a chosen
fraction of every block's learned gates off (seeded): the speed measured is that of a network
with that sparsity pattern, not of a trained one (trained networks keep different channels per
layer; the paper's ResNet-50 at t = 0.5 drops about half of the gated FLOPs).
"""
import contextlib
import copy
from typing import Dict, Optional

import torch

from .benchmark import build_classifier, ratio_stats, time_interleaved


@torch.no_grad()
def set_gate_sparsity(model: torch.nn.Module, off_fraction: float = 0.5, seed: int = 0) -> None:
    """Switch ``round(off_fraction * G_b)`` randomly chosen learned gates of every gated block
    off and the others on (threshold mode). Independent gates: their logits; dependent gates:
    the final bias of the gate networks with zero final weights, so the head still runs on
    every image but always decides the same."""
    from mmmod.models.layers.gumbel_gate import iter_gated_blocks
    if not 0 <= off_fraction <= 1:
        raise ValueError(f'off_fraction must be in [0, 1], got {off_fraction}')
    g = torch.Generator().manual_seed(seed)
    for _, block in iter_gated_blocks(model):
        if block.gate is None:
            continue
        n = block.num_learned_gates
        off = torch.randperm(n, generator=g)[:round(off_fraction * n)]
        logits = torch.tensor([0., 4.]).repeat(n, 1)  # (G, 2): on
        logits[off] = torch.tensor([4., 0.])  # off
        if block.gate_type == 'independent':
            block.gate.logits.copy_(logits)
        else:
            block.gate.fc2.weight.zero_()
            block.gate.fc2.bias.copy_(logits.view(-1))  # (G, 2) -> (2G,)


def benchmark_gating(depth: int = 50, off_fraction: float = 0.5, seed: int = 0,
                     size: int = 224, rounds: int = 10, min_time: float = 0.3,
                     threads: Optional[int] = None, progress: bool = True) -> dict:
    """Batch-1 inference, side by side: ResNet-``depth``; GatedResNet-``depth`` with
    independent gates, masked, and its pruned export; GatedResNet-``depth`` with dependent
    gates, masked and on its active channels (the same gates).

    Returns:
        dict: ``timings`` name -> median ms, ``speedups`` name -> (median, q1, q3) of the
        per-round ratio, ``macs`` name -> MACs (mmengine's FlopAnalyzer; for the dependent
        model the conv MACs of the gated blocks are from the gates), ``setup``.
    """
    from mmmod.models.layers.active_channels import active_channel_inference
    from .complexity import complexity
    from .pruning import prune_model
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x = torch.randn(1, 3, size, size)
    gated_cfg = dict(type='GatedResNet', depth=depth, gate_loss=None)
    base = build_classifier(dict(type='ResNet', depth=depth))
    ind = build_classifier(dict(gated_cfg, gate_type='independent'))
    dep = build_classifier(dict(gated_cfg, gate_type='dependent'))
    set_gate_sparsity(ind, off_fraction, seed)
    set_gate_sparsity(dep, off_fraction, seed)
    for model in (base, ind, dep):
        model.eval()
    pruned, channels = prune_model(ind, gated_cfg)
    dep_active = copy.deepcopy(dep)
    models = {
        f'resnet{depth}': base,
        'gated-ind masked': ind,
        'pruned export': pruned,
        'gated-dep masked': dep,
        'gated-dep active-channel': dep_active,
    }

    def infer(model):
        def fn():
            with torch.no_grad():
                return model(x, mode='tensor')
        return fn

    with contextlib.ExitStack() as stack:
        stack.enter_context(active_channel_inference(dep_active.backbone))
        with torch.no_grad():  # equal outputs: the timings compare the same computation
            a, b = dep(x, mode='tensor'), dep_active(x, mode='tensor')
            c, d = ind(x, mode='tensor'), pruned(x, mode='tensor')
        max_err = dict(active=float((a - b).abs().max() / a.abs().max()),
                       pruned=float((c - d).abs().max() / c.abs().max()))
        stats = dep.backbone.gate_stats
        timings = time_interleaved({n: infer(m) for n, m in models.items()}, rounds,
                                   min_time, threads, progress)
    t = timings
    speedups = {
        'pruned export vs resnet': ratio_stats(t[f'resnet{depth}'], t['pruned export']),
        'gated-ind masked vs resnet': ratio_stats(t[f'resnet{depth}'], t['gated-ind masked']),
        'active-channel vs masked': ratio_stats(t['gated-dep masked'],
                                                t['gated-dep active-channel']),
        'active-channel vs resnet': ratio_stats(t[f'resnet{depth}'],
                                                t['gated-dep active-channel']),
    }
    macs = {n: complexity(m, (size, size), 'mmengine')['macs']
            for n, m in (('resnet', base), ('pruned', pruned))}
    gate_rate = dict(independent=float(ind.backbone.gate_stats.get('gate_rate', float('nan'))),
                     dependent=stats['gate_rate'])
    return dict(
        timings={n: v.median_ms for n, v in timings.items()},
        speedups=speedups,
        macs=dict(macs, pruned_ratio=macs['pruned'] / macs['resnet'],
                  dep_gated_blocks_ratio=stats['gate_flops_ratio'],
                  dep_gated_gmacs=stats['gated_gflops'],
                  dep_gate_net_gmacs=stats['gate_net_gflops']),
        max_rel_err=max_err, gate_rate=gate_rate,
        kept_channels=sum(len(v) for b in channels['blocks'].values() for v in b.values()),
        setup=dict(depth=depth, off_fraction=off_fraction, seed=seed, size=size,
                   threads=threads, rounds=rounds, torch=torch.__version__))


def format_report(result: Dict) -> str:
    """The markdown table tools/benchmark_gating.py prints."""
    s, t, sp, m = result['setup'], result['timings'], result['speedups'], result['macs']
    r = f"resnet{s['depth']}"

    def q(v):
        return f'{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]'

    lines = [
        f"batch 1, {s['size']}x{s['size']}, threads={s['threads']}, {s['rounds']} interleaved "
        f"rounds, torch {s['torch']}; speed-up = per-round time ratio, median [IQR]",
        f"NOT trained weights: {s['off_fraction']:.0%} of every block's learned gates switched "
        f"off at random (seed {s['seed']}); learned-gate rate: independent "
        f"{result['gate_rate']['independent']:.3f}, dependent "
        f"{result['gate_rate']['dependent']:.3f} (always-on groups come on top)",
        '',
        '| model | ms (median) | speed-up | MACs ratio |',
        '|---|---|---|---|',
        f"| {r} | {t[r]:.1f} | 1 | 1 |",
        f"| GatedResNet ind, masked | {t['gated-ind masked']:.1f} | "
        f"{q(sp['gated-ind masked vs resnet'])} vs {r} | 1 (all filters computed) |",
        f"| PrunedResNet (export of the above) | {t['pruned export']:.1f} | "
        f"{q(sp['pruned export vs resnet'])} vs {r} | {m['pruned_ratio']:.3f} vs {r} |",
        f"| GatedResNet dep, masked | {t['gated-dep masked']:.1f} | - | 1 (all filters "
        f"computed) |",
        f"| GatedResNet dep, active channels | {t['gated-dep active-channel']:.1f} | "
        f"{q(sp['active-channel vs masked'])} vs masked; {q(sp['active-channel vs resnet'])} "
        f"vs {r} | {m['dep_gated_blocks_ratio']:.3f} (gated blocks' convs) |",
        '',
        f"MACs (mmengine FlopAnalyzer): {r} {m['resnet'] / 1e9:.3f} G, pruned "
        f"{m['pruned'] / 1e9:.3f} G; dependent gated blocks {m['dep_gated_gmacs']:.3f} G + gate "
        f"networks {m['dep_gate_net_gmacs']:.4f} G. Outputs checked equal: pruned vs masked "
        f"max rel. err {result['max_rel_err']['pruned']:.1e}, active vs masked "
        f"{result['max_rel_err']['active']:.1e}.",
    ]
    return '\n'.join(lines)
