"""Channel gating on CPU, side by side in one process (batch 1, interleaved rounds).

    python tools/benchmark_gating.py [--depth 50] [--off-fraction 0.5] [--rounds 10]
        [--threads N] [--input-size 224] [--json out.json]

Rows: mmpretrain's ResNet; a GatedResNet with data-independent gates (masked) and its pruned
export (tools/export_pruned.py's network) -> speed-up next to the MACs ratio; a GatedResNet
with data-dependent gates, masked vs computing only the active channels (same gates) -> the
batch-1 speed-up. Without trained weights, ``--off-fraction`` of every block's learned gates is
switched off at random (seeded): see mmmod/analysis/gating_benchmark.py.
"""
import argparse
import json

import torch

from mmmod.analysis.gating_benchmark import benchmark_gating, format_report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--depth', type=int, default=50, choices=(18, 34, 50, 101, 152))
    p.add_argument('--off-fraction', type=float, default=0.5,
                   help="fraction of each block's learned gates switched off (default 0.5)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--rounds', type=int, default=10)
    p.add_argument('--min-time', type=float, default=0.3, help='seconds per measurement')
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--input-size', type=int, default=224)
    p.add_argument('--json', help='write the results to this file')
    args = p.parse_args(argv)
    if not 0 <= args.off_fraction <= 1:
        p.error(f'--off-fraction must be in [0, 1], got {args.off_fraction}')
    return args


def main(argv=None):
    args = parse_args(argv)
    result = benchmark_gating(args.depth, args.off_fraction, args.seed, args.input_size,
                              args.rounds, args.min_time, args.threads)
    print(format_report(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), results=result), f, indent=2)
    return result


if __name__ == '__main__':
    main()
