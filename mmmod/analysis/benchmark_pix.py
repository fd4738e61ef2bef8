"""Pick-or-Mix speed: ResNet vs ResNet + PiX side by side, against the FLOPs bound, and the
compiled PiX operator against a naive PyTorch one (the logic behind tools/benchmark_pix.py).

The FLOPs bound is the speed-up a network would get if time were proportional to MACs
(``MACs(ResNet) / MACs(ResNet + PiX)``, 1.30x for ResNet-50 in the paper's Table 1); the
"efficiency" is the measured speed-up divided by that bound. Timing uses
:func:`mmmod.analysis.benchmark.time_interleaved` per depth -- ResNet and ResNet + PiX in
interleaved rounds of short measurements, adjacent in time -- with ratios per round, median and
inter-quartile range.
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from .benchmark import build_classifier, quartiles, ratio_stats, step_fns, time_interleaved
from .complexity import complexity

DEPTHS = (50, 101, 152)
# Table 1 of the paper: depth -> ((ResNet GFLOPs, params M), (ResNet + PiX GFLOPs, params M))
PAPER_TABLE1 = {
    50: ((4.12, 25.5), (3.18, 25.5)),
    101: ((7.85, 44.5), (6.05, 44.5)),
    152: ((11.58, 60.1), (8.91, 60.1)),
}


def model_cfgs(depth: int) -> Dict[str, dict]:
    """``{'resnet<d>': ResNet, 'resnet<d>-pix': ResNetPiX}`` backbone configs."""
    return {f'resnet{depth}': dict(type='ResNet', depth=depth),
            f'resnet{depth}-pix': dict(type='ResNetPiX', depth=depth)}


def complexity_rows(models: Dict[str, nn.Module], depths: Sequence[int]) -> List[dict]:
    """Per depth: GMACs and params (M) of both models ('paper' convention), the paper's, and the
    FLOPs bound of the speed-up."""
    rows = []
    for d in depths:
        base, pix = (complexity(models[n]) for n in model_cfgs(d))
        paper = PAPER_TABLE1[d]
        rows.append(dict(depth=d, gmacs=(base['macs'] / 1e9, pix['macs'] / 1e9),
                         params_m=(base['params'] / 1e6, pix['params'] / 1e6),
                         paper_gflops=(paper[0][0], paper[1][0]),
                         paper_params_m=(paper[0][1], paper[1][1]),
                         bound=base['macs'] / pix['macs']))
    return rows


def speedup_rows(timings, depths: Sequence[int], bounds: Dict[int, float]) -> List[dict]:
    """Per depth: both medians (ms), the speed-up quartiles (ResNet time / PiX time per round)
    and the speed-up's median as a fraction of the FLOPs bound."""
    rows = []
    for d in depths:
        base, pix = (timings[n] for n in model_cfgs(d))
        q = ratio_stats(base, pix)
        rows.append(dict(depth=d, ms=(base.median_ms, pix.median_ms), speedup=q,
                         bound=bounds[d], of_bound=q[0] / bounds[d]))
    return rows


def pix_op_inputs(model: nn.Module, shape=(224, 224)) -> List[Tuple[torch.Tensor, torch.Tensor,
                                                                    int, float, str]]:
    """The ``(x, p, zeta, tau, mode)`` every PiX of ``model`` sees on one random image: the
    operator's real workload (shapes and the share of Max vs Avg groups)."""
    from mmmod.models.layers import PiX
    calls = []

    def hook(module, args, out):
        x = args[0].detach()
        calls.append((x, module.scorer(x).detach(), module.zeta, module.tau, module.mode))

    pixes = [m for m in model.modules() if isinstance(m, PiX)]
    handles = [m.register_forward_hook(hook) for m in pixes]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.rand(1, 3, *shape), mode='tensor')
    finally:
        for h in handles:
            h.remove()
    return calls


def op_fns(calls, train: bool = False) -> Dict[str, callable]:
    """``{'fast': fn, 'naive': fn}``, each running the PiX operator on every call of
    :func:`pix_op_inputs` -- forward only, or forward + backward with ``train``."""
    from mmmod.models.layers.pix import pick_or_mix, pix_naive

    def run(op):
        if not train:
            def fn():
                with torch.no_grad():
                    for x, p, zeta, tau, mode in calls:
                        op(x, p, zeta, tau, mode)
            return fn
        grads = [x.new_ones(x.shape[0], p.shape[1], *x.shape[2:]) for x, p, *_ in calls]
        leaves = [(x.clone().requires_grad_(), p.clone().requires_grad_())
                  for x, p, *_ in calls]

        def fn():
            for (x, p), (_, _, zeta, tau, mode), g in zip(leaves, calls, grads):
                x.grad = p.grad = None
                op(x, p, zeta, tau, mode).backward(g)
        return fn

    return dict(fast=run(pick_or_mix), naive=run(pix_naive))


def benchmark(depths: Sequence[int] = DEPTHS, train_depths: Sequence[int] = (50, ),
              rounds: int = 20, min_time: float = 0.1, threads: int = None,
              train_batch_size: int = 2, shape=(224, 224)) -> dict:
    """Everything tools/benchmark_pix.py prints, as a dict (see the module docstring)."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    names = [n for d in depths for n in model_cfgs(d)]
    cfgs = {n: c for d in depths for n, c in model_cfgs(d).items()}
    models = {n: build_classifier(cfgs[n]).eval() for n in names}
    flops = complexity_rows(models, depths)
    bounds = {r['depth']: r['bound'] for r in flops}

    def timed(depths_, mode, batch_size):
        # one depth at a time: its pair adjacent in time sees the same machine state
        timings = {}
        for d in depths_:
            timings.update(time_interleaved(
                {n: step_fns(models[n], 'cpu', shape, batch_size)[mode] for n in model_cfgs(d)},
                rounds, min_time, threads))
        return timings

    infer = timed(depths, 'inference', 1)
    result = dict(threads=threads, rounds=rounds, flops=flops,
                  inference=speedup_rows(infer, depths, bounds))
    if train_depths:
        train = timed(train_depths, 'train', train_batch_size)
        result['train'] = speedup_rows(train, train_depths, bounds)
        result['train_batch_size'] = train_batch_size

    calls = pix_op_inputs(models['resnet50-pix'] if 'resnet50-pix' in models else
                          build_classifier(model_cfgs(50)['resnet50-pix']), shape)
    ops = {}
    for mode in ('forward', 'forward+backward'):
        t = time_interleaved(op_fns(calls, train=mode != 'forward'), rounds, min_time, threads)
        ops[mode] = dict(ms=(t['naive'].median_ms, t['fast'].median_ms),
                         speedup=ratio_stats(t['naive'], t['fast']))
    picked = sum(int((p < tau).sum()) for _, p, _, tau, _ in calls)
    groups = sum(p.numel() for _, p, *_ in calls)
    result['op'] = dict(calls=len(calls), max_share=picked / groups, **ops)
    return result


def fmt(q) -> str:
    """A quartile triple as ``median [q1, q3]``."""
    return f'{q[0]:.2f}x [{q[1]:.2f}, {q[2]:.2f}]'


def format_report(result: dict) -> str:
    """Markdown tables of :func:`benchmark`'s result."""
    lines = ['## Complexity at 224x224 (MACs incl. activations, as the paper counts FLOPs)', '',
             '| depth | ResNet GMACs / M params | + PiX GMACs / M params | paper (Table 1) | '
             'FLOPs bound |', '|---|---|---|---|---|']
    for r in result['flops']:
        lines.append(f"| {r['depth']} | {r['gmacs'][0]:.2f} / {r['params_m'][0]:.1f} | "
                     f"{r['gmacs'][1]:.2f} / {r['params_m'][1]:.1f} | "
                     f"{r['paper_gflops'][0]} -> {r['paper_gflops'][1]} B, "
                     f"{r['paper_params_m'][1]} M | {r['bound']:.2f}x |")
    sections = [('inference', f"CPU inference, batch 1, {result['threads']} threads")]
    if 'train' in result:
        sections.append(('train', f"CPU training step (forward + backward), batch "
                                  f"{result['train_batch_size']}, {result['threads']} threads"))
    for key, title in sections:
        lines += ['', f"## {title}, {result['rounds']} interleaved rounds", '',
                  '| depth | ResNet ms | + PiX ms | speed-up median [IQR] | FLOPs bound | '
                  'speed-up / bound |', '|---|---|---|---|---|---|']
        for r in result[key]:
            lines.append(f"| {r['depth']} | {r['ms'][0]:.1f} | {r['ms'][1]:.1f} | "
                         f"{fmt(r['speedup'])} | {r['bound']:.2f}x | {r['of_bound']:.0%} |")
    op = result['op']
    lines += ['', f"## PiX operator: the {op['calls']} PiX calls of one ResNet-50 + PiX image "
              f"({op['max_share']:.0%} of the groups pick the Max)", '',
              '| pass | naive (Max and Avg, then where) ms | fast op ms | speed-up |',
              '|---|---|---|---|']
    for mode in ('forward', 'forward+backward'):
        r = op[mode]
        lines.append(f"| {mode} | {r['ms'][0]:.2f} | {r['ms'][1]:.2f} | {fmt(r['speedup'])} |")
    return '\n'.join(lines)


__all__ = ['benchmark', 'format_report', 'complexity_rows', 'speedup_rows', 'pix_op_inputs',
           'op_fns', 'model_cfgs', 'PAPER_TABLE1', 'quartiles']
