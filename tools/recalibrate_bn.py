"""Recalibrate the BatchNorm statistics of a trained (gated) model before evaluation.

    python tools/recalibrate_bn.py CONFIG CHECKPOINT --out recal.pth [--num-batches 200]
        [--batch-size B] [--gate-mode train|inference] [--work-dir DIR] [--cfg-options ...]
    python tools/test.py CONFIG recal.pth

Runs ``--num-batches`` training-mode forward passes over the config's train dataloader with no
weight update and re-estimates every trainable BN layer's running statistics as their average
over those batches (Herrmann et al., Sec. 4.1: "training with a learning rate of zero ... for 200
batches"; see mmmod/engine/bn_recalibration.py). ``--out`` is a normal checkpoint (``meta`` and
``state_dict``) that tools/test.py loads. Single process.
"""
import argparse
import os
import os.path as osp

import mmmod  # noqa: F401  registers mmmod's modules; safe checkpoint loaders
from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu

from mmmod.engine.bn_recalibration import GATE_MODES, recalibrate_bn
from mmmod.engine.runner import (add_common_args, apply_train_args, build_runner, load_config,
                                 prepare_environment)

EVAL_SECTIONS = ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                 'test_evaluator')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Recalibrate BatchNorm statistics')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('--out', required=True, help='where to write the checkpoint (.pth)')
    parser.add_argument('--num-batches', type=int, default=200,
                        help='training batches to average over (paper: 200)')
    parser.add_argument('--batch-size', type=int,
                        help="images per batch; default: the config's train_dataloader's")
    parser.add_argument('--gate-mode', choices=GATE_MODES, default='train',
                        help="gates sampled as in training ('train', the paper's procedure) or "
                        "in the model's inference mode ('inference')")
    parser.add_argument('--work-dir', help='where the run log goes (default ./work_dirs/NAME)')
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.num_batches < 1:
        parser.error(f'--num-batches must be >= 1, got {args.num_batches}')
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.launcher != 'none':
        parser.error('recalibrate_bn.py runs in one process: --launcher none')
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    for name in EVAL_SECTIONS:  # only the training data is read
        cfg[name] = None
    cfg.load_from, cfg.resume = None, False
    if args.batch_size is not None:
        cfg.train_dataloader.batch_size = args.batch_size
    cfg = apply_train_args(cfg, work_dir=args.work_dir)
    runner = build_runner(prepare_environment(cfg, 'train'))
    checkpoint = runner.load_checkpoint(args.checkpoint, map_location='cpu')
    dataloader = runner.build_dataloader(cfg.train_dataloader, seed=runner.seed)
    done = recalibrate_bn(runner.model, dataloader, args.num_batches, args.gate_mode)

    meta = dict(checkpoint.get('meta') or {})
    meta['bn_recalibration'] = dict(
        source=args.checkpoint, gate_mode=args.gate_mode,
        batch_size=int(cfg.train_dataloader.batch_size), **done)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    save_checkpoint(dict(meta=meta, state_dict=weights_to_cpu(get_state_dict(runner.model))),
                    args.out)
    runner.logger.info(f'recalibrated {done["num_bn"]} BatchNorm layers over '
                       f'{done["num_batches"]} batches; written {args.out}')
    return args.out


if __name__ == '__main__':
    main()
