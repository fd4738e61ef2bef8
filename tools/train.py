"""Train a model from an mmpretrain, mmseg or mmdet config (``default_scope`` decides).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
    bash tools/dist_train.sh CONFIG NPROC [options]      # GPUs, or CPU processes (gloo)
"""
import argparse
import os

from mmengine.config import Config, DictAction

import mmmod  # noqa: F401  registers mmmod's modules; checkpoint allow-list
from mmmod.compat import allow_unsafe_checkpoint_loading
from mmmod.engine.runner import apply_train_args, run_train


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
    parser.add_argument(
        '--unsafe-load-checkpoint',
        action='store_true',
        help='load checkpoints with the full pickle unpickler '
        '(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1). Unpickling can run arbitrary code: only for '
        'trusted legacy checkpoints holding objects beyond what mmengine writes')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, xxx=yyy; lists as key="[a,b]" or key=a,b')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.unsafe_load_checkpoint:
        allow_unsafe_checkpoint_loading()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
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
