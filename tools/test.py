"""Evaluate a checkpoint with an mmpretrain, mmseg or mmdet config (``default_scope`` decides).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out preds.pkl] [--show-dir DIR]
    bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [options]

The metrics are written as json to ``WORK_DIR/TIMESTAMP/TIMESTAMP.json``.
"""
import argparse
import os

from mmengine.config import Config, DictAction

import mmmod  # noqa: F401  registers mmmod's modules; checkpoint allow-list
from mmmod.compat import allow_unsafe_checkpoint_loading
from mmmod.engine.runner import apply_test_args, run_test


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save the file containing evaluation metrics')
    parser.add_argument('--out', help='dump the predictions to a .pkl file')
    parser.add_argument('--show-dir', help='the dir to save painted predictions')
    parser.add_argument(
        '--unsafe-load-checkpoint',
        action='store_true',
        help='load the checkpoint with the full pickle unpickler '
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
    cfg = apply_test_args(
        cfg,
        args.checkpoint,
        work_dir=args.work_dir,
        out=args.out,
        show_dir=args.show_dir,
        launcher=args.launcher)
    run_test(cfg)


if __name__ == '__main__':
    main()
