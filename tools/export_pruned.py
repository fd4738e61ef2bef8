"""Export a data-independent GatedResNet / GatedMobileNetV2, or a dynamic-channel-execution
(channel bandit) run, as a physically smaller network.

    python tools/export_pruned.py CONFIG CHECKPOINT --out-dir DIR [--tau 0.5] [--shape H [W]]
    python tools/test.py configs/gating/resnet50-gate-ind-t05-pruned_8xb32_in1k.py \
        DIR/<name>_pruned.pth --cfg-options model.backbone.channel_cfg=DIR/<name>_channels.json

    python tools/export_pruned.py configs/dce/resnet50-dce-p30_1xb64_svhn.py \
        work_dirs/resnet50-dce-p30_1xb64_svhn/epoch_20.pth --out-dir DIR [--by random]
    python tools/train.py configs/dce/resnet50-dce-p30-ft_1xb64_svhn.py \
        --cfg-options load_from=DIR/<name>_pruned.pth \
        model.backbone.channel_cfg=DIR/<name>_channels.json

Gated models: thresholds the gates of CONFIG's model (with CHECKPOINT's weights) at ``--tau``
-- what its ``'threshold'`` inference mode does -- and removes the gated-off filters (and the
next conv's matching inputs). Channel-bandit models (``BanditResNet``, ...): fixes the topology
by mean saliency (Alg. 1 step 12; ``--by random``: the paper's random-channel baseline of
Fig. 3) and keeps the active channels only. Writes:

- ``DIR/<name>_channels.json``: kept channel indices of every position of every block (and the
  stem), the ``channel_cfg`` of ``backbone=dict(type='PrunedResNet' (or PrunedResNetV1c,
  PrunedMobileNetV2, ...), ...)``;
- ``DIR/<name>_pruned.pth``: a normal checkpoint (``state_dict`` of the whole model with the
  backbone replaced, ``meta``) whose outputs equal the thresholded gated model's / the bandit
  model's with its topology fixed (eval mode).

and prints parameters and MACs before (the gated model computes every filter, then masks; for
a bandit run: the full-width baseline network) and after. Data-dependent gates cannot be
exported (they change per image): see mmmod/models/layers/active_channels.py for their
batch-1 active-channel inference.
"""
import argparse

from mmengine.config import Config, DictAction

import mmmod  # noqa: F401  registers the backbones; safe checkpoint loaders
from mmmod.analysis.pruning import export_pruned


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export a pruned network from a gated one')
    parser.add_argument('config', help='config of the gated (data-independent) model')
    parser.add_argument('checkpoint', help='its trained checkpoint')
    parser.add_argument('--out-dir', required=True, help='where the two files go')
    parser.add_argument('--tau', type=float, default=0.5,
                        help="gate threshold, as the 'threshold' inference mode (default 0.5)")
    parser.add_argument('--by', choices=('mean', 'random'), default='mean',
                        help='how a channel-bandit run fixes its topology: by mean saliency '
                        '(Alg. 1 step 12, default) or at random (Fig. 3 baseline); the '
                        'random export is written as <name>_random_*')
    parser.add_argument('--shape', type=int, nargs='+', metavar='SIZE',
                        help='input H [W] for the MAC count; default: the test pipeline size')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, xxx=yyy')
    args = parser.parse_args(argv)
    if not 0 <= args.tau < 1:
        parser.error(f'--tau must be in [0, 1), got {args.tau}')
    if args.shape is not None:
        if len(args.shape) not in (1, 2):
            parser.error('--shape takes H or H W')
        args.shape = tuple(args.shape * 2 if len(args.shape) == 1 else args.shape)
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    result = export_pruned(cfg, args.checkpoint, args.out_dir, args.tau, args.shape, args.by)
    h, w = result['shape']
    print(f'| {h}x{w} | params (M) | GMACs |\n|---|---|---|')
    for when in ('before', 'after'):
        print(f"| {when} | {result['params'][when] / 1e6:.3f} | "
              f"{result['macs'][when] / 1e9:.4f} |")
    print(f"params after / before: {result['params']['after'] / result['params']['before']:.3f}"
          f", MACs after / before: {result['macs']['after'] / result['macs']['before']:.3f}")
    print(f"written {result['checkpoint']}\nwritten {result['channels']}")
    return result


if __name__ == '__main__':
    main()
