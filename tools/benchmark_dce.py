"""Dynamic channel execution: the cost of a training step, thin vs masked vs the baseline, CPU.

    python tools/benchmark_dce.py                              # every model, p = 0.3 0.5 0.7
    python tools/benchmark_dce.py --models resnet50-cifar --ratios 0.3 --rounds 3

One training step as ChannelBanditHook runs it -- select the channels (UCB), note the inactive
entries, forward + backward, SGD with Nesterov momentum and weight decay, put the inactive
entries back, update the bandit -- for the thin execution (only the active sub-network is
computed) and the paper's masked one (the full network, inactive outputs times 0), next to the
same step of mmpretrain's plain network. In one process, same threads, per model and ratio the
three in interleaved rounds of short measurements (ratios per round, median [inter-quartile
range]), after the bandit's initialisation round, so the timed steps select by UCB. Next to the
speed-ups: the MACs ratio baseline / active sub-network (mmengine's analyzer on the thin
forward), the thin speed-up as a share of it (target >= 0.8), and the activation memory autograd
saves for backward (MB, thin / baseline). Models (``--models``) are the table
``mmmod.analysis.benchmark_dce.DCE_MODELS``; a bandit backbone that is not available yet is
skipped with one line. A shared machine makes single numbers noisy: read the inter-quartile
range.
"""
import argparse
import json

import torch

from mmmod.analysis.benchmark_dce import (DCE_MODELS, DEFAULT_RATIOS, benchmark_dce,
                                          check_ratio, format_report)


def ratio_arg(text: str) -> float:
    try:
        return check_ratio(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=list(DCE_MODELS), choices=list(DCE_MODELS))
    p.add_argument('--ratios', nargs='+', type=ratio_arg, default=list(DEFAULT_RATIOS),
                   help='active-channel ratios p, each in (0, 1]')
    p.add_argument('--rounds', type=int, default=10)
    p.add_argument('--min-time', type=float, default=0.2, help='seconds per measurement')
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--batch-size', type=int, help="override every model's batch size")
    p.add_argument('--input-size', type=int, help="override every model's input size")
    p.add_argument('--macs-samples', type=int, default=3,
                   help="timed steps whose selection's MACs are counted (mean reported)")
    p.add_argument('--json', help='write the results to this file')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = benchmark_dce(args.models, args.ratios, args.rounds, args.min_time, args.threads,
                           batch_size=args.batch_size, input_size=args.input_size,
                           macs_samples=args.macs_samples)
    print(format_report(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), results=result), f, indent=2)
    return result


if __name__ == '__main__':
    main()
