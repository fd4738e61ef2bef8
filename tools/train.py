"""Train a model from an mmpretrain, mmseg or mmdet config (``default_scope`` decides).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
    bash tools/dist_train.sh CONFIG NPROC [options]      # GPUs, or CPU processes (gloo)
"""
import argparse

import mmmod  # noqa: F401  registers mmmod's modules; safe checkpoint loaders
from mmmod.engine.runner import add_common_args, apply_train_args, load_config, run_train


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint; without a value, from the latest '
        'checkpoint in the work dir')
    parser.add_argument(
        '--amp', action='store_true', help='enable automatic mixed-precision training')
    parser.add_argument(
        '--auto-scale-lr', action='store_true', help='scale the lr by the total batch size')
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    cfg = apply_train_args(
        cfg,
        work_dir=args.work_dir,
        resume=args.resume,
        amp=args.amp,
        auto_scale_lr=args.auto_scale_lr,
        launcher=args.launcher)
    run_train(cfg)


if __name__ == '__main__':
    main()
