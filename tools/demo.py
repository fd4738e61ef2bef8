"""The main job on an embedded default, end to end on this machine (``make demo``).

1. Generate a small ImageNet-format dataset (``mmmod.datasets.make_imagenet``).
2. Train ``configs/imagenet/resnet50-mod_8xb32_in1k.py`` and its ResNet-50 baseline for a few
   iterations on it with ``tools/train.py`` (inputs shrunk to 64x64 so 2 CPU cores finish in
   about a minute each), then evaluate each checkpoint with ``tools/test.py --latency`` (the
   LatencyHook times batch-1 inference on the test inputs): the metrics json is printed.
3. Count GMACs and parameters at 224x224 (``tools/analysis/get_flops.py``) and assemble the
   paper's Table 1 from these work dirs (``tools/make_tables.py``; rows without runs stay empty).
4. Benchmark every CNN-MoD backbone against its baseline and its zero-cost ceiling
   (``tools/benchmark_mod.py``, a short run; ``make bench`` for the full one).
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys

from mmengine.config import Config

from mmmod.datasets import make_imagenet

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = ('configs/imagenet/resnet50_8xb32_in1k.py', 'configs/imagenet/resnet50-mod_8xb32_in1k.py')


def demo_config(config: str, data_root: str, size: int = 64, iters: int = 20) -> Config:
    """An ImageNet config pointed at ``data_root``, at ``size`` px, for ``iters`` iterations."""
    cfg = Config.fromfile(osp.join(ROOT, config))
    train_pipeline = [dict(type='LoadImageFromFile'),
                      dict(type='RandomResizedCrop', scale=size),
                      dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                      dict(type='PackInputs')]
    test_pipeline = [dict(type='LoadImageFromFile'),
                     dict(type='ResizeEdge', scale=size * 8 // 7, edge='short'),
                     dict(type='CenterCrop', crop_size=size),
                     dict(type='PackInputs')]
    for name, split, pipeline in (('train_dataloader', 'train', train_pipeline),
                                  ('val_dataloader', 'val', test_pipeline),
                                  ('test_dataloader', 'val', test_pipeline)):
        cfg[name].update(batch_size=8, num_workers=0, persistent_workers=False)
        cfg[name].dataset.update(data_root=data_root, split=split, pipeline=pipeline)
    cfg.train_cfg = dict(by_epoch=False, max_iters=iters, val_interval=iters)
    cfg.param_scheduler = dict(type='ConstantLR', factor=1.0, by_epoch=False)
    cfg.optim_wrapper.optimizer.lr = 0.01
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=iters, by_epoch=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=5)
    cfg.log_processor = dict(by_epoch=False)  # iteration-based run: log 'Iter(train) [i/n]'
    return cfg


def run(cmd):
    print('$', ' '.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo'))
    p.add_argument('--iters', type=int, default=20)
    p.add_argument('--bench-rounds', type=int, default=3)
    args = p.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)

    data_root = make_imagenet(osp.join(args.work_dir, 'data', 'imagenet'), num_classes=4,
                              num_train_per_class=16, num_val_per_class=8)
    print(f'[1/4] generated an ImageNet-format dataset in {data_root}')

    flops = []
    for config in CONFIGS:
        name = osp.splitext(osp.basename(config))[0]
        cfg_file = osp.join(args.work_dir, 'configs', f'{name}.py')
        os.makedirs(osp.dirname(cfg_file), exist_ok=True)
        demo_config(config, data_root, iters=args.iters).dump(cfg_file)
        train_dir = osp.join(args.work_dir, 'train', name)
        test_dir = osp.join(args.work_dir, 'test', name)  # named after the config: make_tables
        print(f'[2/4] {name}: training {args.iters} iterations, then testing with latency')
        run([sys.executable, 'tools/train.py', cfg_file, '--work-dir', train_dir])
        with open(osp.join(train_dir, 'last_checkpoint')) as f:
            ckpt = f.read().strip()
        run([sys.executable, 'tools/test.py', cfg_file, ckpt, '--work-dir', test_dir,
             '--latency', 'cpu'])
        result = sorted(glob.glob(osp.join(test_dir, '*', '*.json')))[-1]
        with open(result) as f:
            print(f'{name} test metrics ({result}):', json.dumps(json.load(f)))
        flops.append(osp.join(args.work_dir, 'complexity', f'{name}.json'))
        print(f'[3/4] {name}: GMACs and parameters at 224x224')
        run([sys.executable, 'tools/analysis/get_flops.py', config, '--shape', '224',
             '--out', flops[-1]])

    tables = osp.join(args.work_dir, 'tables')
    run([sys.executable, 'tools/make_tables.py', '--work-dirs', osp.join(args.work_dir, 'test'),
         '--complexity', *flops, '--out-dir', tables])

    print('[4/4] CNN-MoD speed: speed-up over the baseline, the zero-cost ceiling, their ratio')
    run([sys.executable, 'tools/benchmark_mod.py', '--rounds', str(args.bench_rounds),
         '--min-time', '0.2'])


if __name__ == '__main__':
    main()
