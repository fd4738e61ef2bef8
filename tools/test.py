"""Evaluate a checkpoint with an mmpretrain, mmseg or mmdet config (``default_scope`` decides).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out preds.pkl] [--show-dir DIR]
        [--latency [cpu] [cuda]] [--tta] [--non-strict]
    bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [options]

The metrics are written as json to ``WORK_DIR/TIMESTAMP/TIMESTAMP.json``. A checkpoint whose
weights do not fit the config's model is refused (``CheckpointMatchHook``) unless
``--non-strict``. ``--latency`` builds its ``LatencyHook`` with the config's ``latency_cfg``
(e.g. ``--cfg-options latency_cfg.warmup=1 latency_cfg.repeats=3`` for a short timing budget).
"""
import argparse

import mmmod  # noqa: F401  registers mmmod's modules; safe checkpoint loaders
from mmmod.engine.runner import add_common_args, apply_test_args, load_config, run_test


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save the file containing evaluation metrics')
    parser.add_argument('--out', help='dump the predictions to a .pkl file')
    parser.add_argument('--show-dir', help='the dir to save painted predictions')
    parser.add_argument(
        '--latency',
        nargs='*',
        metavar='DEVICE',
        help='also time inference with LatencyHook on DEVICE(s) (default: cpu); the figures '
        "go into the metrics json. Its other arguments come from the config's latency_cfg, "
        'e.g. --cfg-options latency_cfg.warmup=1 latency_cfg.repeats=3 for a short timing '
        "budget (default: LatencyHook's)")
    parser.add_argument(
        '--tta', action='store_true',
        help="test-time augmentation: the config's tta_model around its model, tta_pipeline "
        'as the test pipeline (e.g. an ensemble of stochastic gated passes)')
    parser.add_argument(
        '--non-strict', action='store_true',
        help='load a checkpoint that does not fit the model (tensors of another shape, '
        'missing or unexpected keys): the matching tensors load, the others keep their '
        "initial values, with mmengine's warnings. Without it such a checkpoint is refused "
        'with a list of the mismatched keys')
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    if args.latency is not None:
        latency = dict(type='LatencyHook', **cfg.get('latency_cfg', {}))
        latency['devices'] = tuple(args.latency) or latency.get('devices', ('cpu', ))
        cfg.custom_hooks = [*cfg.get('custom_hooks', []), latency]
    cfg = apply_test_args(
        cfg,
        args.checkpoint,
        work_dir=args.work_dir,
        out=args.out,
        show_dir=args.show_dir,
        launcher=args.launcher,
        tta=args.tta,
        strict=not args.non_strict)
    run_test(cfg)


if __name__ == '__main__':
    main()
