"""CNN-MoD speed: each MoD network vs. its standard baseline and vs. its zero-cost ceiling.

For every model: the CPU speed-up over mmpretrain's own baseline classifier (ResNet-50/101,
MobileNetV2), the speed-up of the same network with its MoD blocks deleted (the ceiling, what
MoD could give if its blocks cost nothing), and their ratio (1.0 = MoD blocks are free; the
target is >= 0.97). Measured side by side in one process, batch 1, 224x224, fixed thread count:
each model is timed together with its baseline and its ceiling in interleaved rounds of short
measurements, so the three see the same machine state; median and inter-quartile range of the
per-round ratios.

    python tools/benchmark_mod.py                         # all six models of the paper
    python tools/benchmark_mod.py --models resnet50-mod --rounds 5 --train
"""
import argparse
import json

import torch
from mmengine.utils import ProgressBar

from mmmod.analysis.benchmark import (PAPER_CPU_SPEEDUPS, build_classifier, ratio_stats,
                                      strip_mod_blocks, time_interleaved)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=list(PAPER_CPU_SPEEDUPS),
                   choices=list(PAPER_CPU_SPEEDUPS))
    p.add_argument('--rounds', type=int, default=20)
    p.add_argument('--min-time', type=float, default=0.1, help='seconds per measurement')
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--input-size', type=int, default=224)
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--train', action='store_true',
                   help='also time a training step (forward + backward) at --train-batch-size')
    p.add_argument('--train-batch-size', type=int, default=8)
    p.add_argument('--json', help='write the results to this file')
    return p.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size).to(memory_format=fmt)
    xt = torch.randn(args.train_batch_size, 3, args.input_size, args.input_size).to(
        memory_format=fmt)
    target = torch.randint(0, 1000, (args.train_batch_size, ))

    models = {}
    for name in args.models:
        base = PAPER_CPU_SPEEDUPS[name][0]
        for n in (base, name):
            if n not in models:
                models[n] = build_classifier(n).to(memory_format=fmt)
                models[n].eval()
        models[f'{name} (ceiling)'] = strip_mod_blocks(models[name])

    def infer(m):
        def fn():
            with torch.no_grad():
                return m(x, mode='tensor')
        return fn

    def train_step(m):
        def fn():
            m.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(xt, mode='tensor'), target).backward()
        return fn

    print(f'threads={args.threads} batch={args.batch_size} input={args.input_size} '
          f'channels_last={args.channels_last} torch={torch.__version__}')

    def timed(make_fn, rounds):
        # per model: its baseline, itself and its ceiling interleaved, adjacent in time
        timings = {}
        bar = ProgressBar(len(args.models))
        for name in args.models:
            group = (PAPER_CPU_SPEEDUPS[name][0], name, f'{name} (ceiling)')
            times = time_interleaved({n: make_fn(models[n]) for n in group}, rounds,
                                     args.min_time, args.threads, progress=False)
            timings.update({(name, n): t for n, t in times.items()})
            bar.update()
        print()
        return timings

    results = {'inference': timed(infer, args.rounds)}
    if args.train:
        for m in models.values():
            m.train()  # BN in training mode, as in a real step
        results['train'] = timed(train_step, max(3, args.rounds // 2))
    report = {}
    for mode, timings in results.items():
        print(f'\n## {mode}: ms per call (median), speed-up over baseline [IQR]')
        print('| model | baseline | ms | speed-up | ceiling speed-up | ratio to ceiling |'
              ' paper CPU |')
        print('|---|---|---|---|---|---|---|')
        for name in args.models:
            base, paper = PAPER_CPU_SPEEDUPS[name]
            t, tb, tc = (timings[name, n] for n in (name, base, f'{name} (ceiling)'))
            sp, ce, ra = ratio_stats(tb, t), ratio_stats(tb, tc), ratio_stats(tc, t)
            row = dict(baseline=base, ms=t.median_ms, baseline_ms=tb.median_ms,
                       ceiling_ms=tc.median_ms, speedup=sp, ceiling_speedup=ce,
                       ratio_to_ceiling=ra, paper_cpu_speedup=paper)
            report.setdefault(mode, {})[name] = row
            print(f'| {name} | {base} ({tb.median_ms:.1f} ms) | {t.median_ms:.1f} | '
                  f'{sp[0]:.3f} [{sp[1]:.3f}, {sp[2]:.3f}] | '
                  f'{ce[0]:.3f} [{ce[1]:.3f}, {ce[2]:.3f}] | '
                  f'{ra[0]:.3f} [{ra[1]:.3f}, {ra[2]:.3f}] | {paper:.2f} |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), results=report), f, indent=2)


if __name__ == '__main__':
    main()
