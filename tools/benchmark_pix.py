"""Pick-or-Mix speed on CPU: mmpretrain's ResNet-50/101/152 vs ResNetPiX side by side.

    python tools/benchmark_pix.py                       # all three depths, training for 50
    python tools/benchmark_pix.py --depths 50 --rounds 20 --json pix.json

In one process, same threads, per depth both models in interleaved rounds of short measurements
(ratios per round, median [inter-quartile range]): inference of the classifiers at batch 1,
224x224; a training step (forward + backward of the loss, batch 2) for ``--train-depths``; the
MACs of both (mmengine's analyzer) next to the paper's Table 1, the FLOPs bound
MACs(ResNet) / MACs(ResNet + PiX) and the measured speed-up as a fraction of it; and the PiX
operator alone (the compiled one vs Max and Avg computed then selected), on the inputs the 16
PiX modules of ResNet-50 + PiX see. The issue's targets: ResNet-50 + PiX >= 1.20x on CPU
inference, and a faster training step than ResNet-50. A shared machine makes single numbers
noisy: read the inter-quartile range.
"""
import argparse
import json

import torch

from mmmod.analysis.benchmark_pix import DEPTHS, benchmark, format_report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--depths', type=int, nargs='+', default=list(DEPTHS), choices=DEPTHS)
    p.add_argument('--train-depths', type=int, nargs='*', default=[50], choices=DEPTHS,
                   help='depths whose training step is timed (none: skip)')
    p.add_argument('--train-batch-size', type=int, default=2)
    p.add_argument('--rounds', type=int, default=20)
    p.add_argument('--min-time', type=float, default=0.1, help='seconds per measurement')
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--json', help='write the results to this file')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = benchmark(args.depths, args.train_depths, args.rounds, args.min_time,
                       args.threads, args.train_batch_size)
    print(format_report(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), results=result), f, indent=2)
    return result


if __name__ == '__main__':
    main()
