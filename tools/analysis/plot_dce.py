"""Plot the per-layer active fraction of a dynamic-channel-execution run over training.

    python tools/analysis/plot_dce.py work_dirs/resnet50-dce-p30_1xb64_svhn --out layers.png

Reads ``WORK_DIR/bandit_history.jsonl`` (``ChannelBanditHook`` appends a record every
``log_interval`` iterations) and writes a PNG: one row per arm layer, its active fraction over
iterations, and the arms never tried yet below.
"""
import argparse
import os.path as osp

from mmmod.analysis.bandit_history import plot_layer_activity, read_history
from mmmod.engine.hooks.channel_bandit_hook import ChannelBanditHook


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('work_dir', help='the run\'s work dir (or the .jsonl file itself)')
    p.add_argument('--out', default='bandit_layers.png')
    p.add_argument('--title', default='')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    path = args.work_dir if osp.isfile(args.work_dir) else \
        osp.join(args.work_dir, ChannelBanditHook.history_file)
    if not osp.isfile(path):
        raise SystemExit(f'{path} not found: train with ChannelBanditHook (it writes the '
                         f'history every log_interval iterations) and pass its work dir')
    history = read_history(path)
    out = plot_layer_activity(history, args.out, args.title or osp.basename(
        osp.dirname(osp.abspath(path))))
    print(f'wrote {out} ({len(history["iters"])} records, {len(history["layers"])} layers)')


if __name__ == '__main__':
    main()
