"""Several models side by side in one process: inference and training-step time, peak memory.

    python tools/benchmark.py resnet50 resnet50-mod resnet75-mod --baseline resnet50
    python tools/benchmark.py configs/voc/faster-rcnn_r50_fpn_1x_voc0712.py \
        configs/voc/faster-rcnn_r50-mod_fpn_1x_voc0712.py --shape 600 1000 --rounds 5

A MODEL is a classifier preset (``mmmod.analysis.benchmark.PRESETS``) or any mmpretrain, mmseg
or mmdet config. Inference is ``predict`` on a preprocessed random batch (batch 1 by default);
the training step is forward + backward of the ``loss`` on a random batch with ground truth.
Rounds are interleaved (every model once per round, order rotating) and ratios are taken per
round; reported as median [inter-quartile range]. Devices: CPU, and CUDA when present. Peak
memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU how far the resident memory of a
fresh process that built the model rises during one pass (the model itself not included).
For the CNN-MoD zero-cost ceiling see ``tools/benchmark_mod.py``.
"""
import argparse
import json
import os.path as osp

import torch

from mmmod.analysis.benchmark import (build_model, peak_memory_mb, ratio_stats, step_fns,
                                      time_interleaved)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('models', nargs='+', help='preset names or config files')
    p.add_argument('--baseline', help='model the speed-ups are relative to (default: first)')
    p.add_argument('--devices', nargs='+', default=None,
                   help='default: cpu, plus cuda when available')
    p.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--train-batch-size', type=int, default=2)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--min-time', type=float, default=0.2, help='seconds per measurement')
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--no-train', action='store_true', help='skip the training step')
    p.add_argument('--no-memory', action='store_true', help='skip peak memory')
    p.add_argument('--json', help='write the results to this file')
    args = p.parse_args(argv)
    args.baseline = args.baseline or args.models[0]
    if args.baseline not in args.models:
        p.error(f'--baseline {args.baseline!r} is not one of the models {args.models}')
    for m in args.models:
        if m.endswith('.py') and not osp.isfile(m):
            p.error(f'config file not found: {m}')
    return args


def fmt(q):
    return f'{q[0]:.3f} [{q[1]:.3f}, {q[2]:.3f}]'


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    devices = args.devices or (['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    models = {m: build_model(m) for m in args.models}
    modes = ['inference'] + ([] if args.no_train else ['train'])
    report = {}
    for device in devices:
        for mode in modes:
            bs = args.batch_size if mode == 'inference' else args.train_batch_size
            fns = {m: step_fns(model, device, args.shape, bs)[mode]
                   for m, model in models.items()}
            timings = time_interleaved(fns, args.rounds, args.min_time, args.threads)
            base = timings[args.baseline]
            print(f'\n## {mode} on {device}: batch {bs}, {args.shape[0]}x{args.shape[1]}, '
                  f'{args.threads} threads; speed-up over {args.baseline}')
            print('| model | ms | speed-up | peak memory of the pass (MiB) |')
            print('|---|---|---|---|')
            for m in args.models:
                mem = (None if args.no_memory else
                       peak_memory_mb(m, device, args.shape, bs, mode))
                sp = ratio_stats(base, timings[m])
                report.setdefault(device, {}).setdefault(mode, {})[m] = dict(
                    ms=timings[m].median_ms, speedup=sp, peak_memory_mb=mem)
                mem_s = '—' if mem is None else f'{mem:.1f}'
                print(f'| {m} | {timings[m].median_ms:.1f} | {fmt(sp)} | {mem_s} |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), results=report), f, indent=2)
    return report


if __name__ == '__main__':
    main()
