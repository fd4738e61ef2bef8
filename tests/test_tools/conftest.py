"""Tiny end-to-end runs of ``tools/``: an mmpretrain ResNet-18 config over the session's tiny
ImageNet (``imagenet_data_root`` in tests/conftest.py) and helper hooks, written to tmp dirs,
plus a runner for the tools as subprocesses."""
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(REPO, 'tools')
# Bounds a hung tool; no run comes near it, even on a machine loaded by other processes (the
# longest, a Faster R-CNN train + test, takes minutes there).
TOOL_TIMEOUT_S = 30 * 60


@pytest.fixture(scope='session')
def imagenet_counts(imagenet_data_root):
    """``(num_classes, num_val_images)`` of the session's tiny ImageNet (tests/conftest.py)."""
    root = osp.join(imagenet_data_root, 'train')
    num_classes = len(os.listdir(root))
    with open(osp.join(imagenet_data_root, 'meta', 'val.txt')) as f:
        return num_classes, sum(1 for line in f if line.strip())


# Written next to the config and imported through ``custom_imports``; the hooks register
# into mmengine's root HOOKS, which mmpretrain's registry searches.
HELPER_HOOKS = '''
import json
import os
import os.path as osp
import signal
import time

import torch
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillAfterIterHook(Hook):
    """SIGKILL this process right after iteration ``kill_at`` (1-based) and its checkpoint."""
    priority = 'LOWEST'  # after CheckpointHook (VERY_LOW)

    def __init__(self, kill_at):
        self.kill_at = kill_at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class WaitForFileHook(Hook):
    """Before training, create ``ready`` and wait until ``go`` exists (at most ``timeout`` s):
    keeps a run alive, holding its work dir, while a test starts another."""

    def __init__(self, ready, go, timeout):
        self.ready, self.go, self.timeout = ready, go, timeout

    def before_train(self, runner):
        open(self.ready, 'w').close()
        deadline = time.monotonic() + self.timeout
        while not osp.exists(self.go) and time.monotonic() < deadline:
            time.sleep(0.1)


@HOOKS.register_module()
class RankMarkerHook(Hook):
    """Write rank, world size, last iteration, wrapper, a weight checksum and the number of
    SyncBatchNorm layers to rank{r}.json."""

    def after_train(self, runner):
        rank, world_size = get_dist_info()
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
        with open(osp.join(runner.work_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(dict(rank=rank, world_size=world_size, iter=runner.iter,
                           wrapper=type(runner.model).__name__, checksum=checksum,
                           sync_bn=sum(isinstance(m, torch.nn.SyncBatchNorm)
                                       for m in model.modules())), f)
'''

CONFIG = '''
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmmod_tool_test_hooks'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet', depth=18, out_indices=(3, ),
                  norm_cfg=dict(type='SyncBN', requires_grad=True)),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes={num_classes}, in_channels=512,
              loss=dict(type='CrossEntropyLoss'), topk=(1, )))
data_preprocessor = dict(num_classes={num_classes}, mean=[123.675, 116.28, 103.53],
                         std=[58.395, 57.12, 57.375], to_rgb=True)
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=2, num_workers=0,
    dataset=dict(type='ImageNet', data_root={data_root!r}, split='train', pipeline=pipeline),
    sampler=dict(type='InfiniteSampler', shuffle=True))
val_dataloader = dict(
    batch_size=2, num_workers=0,
    dataset=dict(type='ImageNet', data_root={data_root!r}, split='val', pipeline=pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4))
param_scheduler = dict(type='MultiStepLR', by_epoch=False, milestones=[3], gamma=0.1)
train_cfg = dict(by_epoch=False, max_iters={max_iters}, val_interval={max_iters})
val_cfg = dict()
test_cfg = dict()

log_processor = dict(by_epoch=False)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=1),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval={ckpt_interval}),
    sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = {custom_hooks!r}
# as upstream runtimes say; mmmod.compat.setup_distributed switches CPU runs to gloo
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
'''


@pytest.fixture(scope='session')
def write_config(imagenet_data_root, imagenet_counts):
    """``write_config(directory, max_iters=6, ckpt_interval=2, custom_hooks=[...])`` writes
    the config and its helper hooks into ``directory`` and returns the config's path."""

    def write(directory, max_iters=6, ckpt_interval=2, custom_hooks=()):
        (directory / 'mmmod_tool_test_hooks.py').write_text(HELPER_HOOKS)
        path = directory / 'tiny_resnet18_cls.py'
        path.write_text(
            CONFIG.format(
                data_root=str(imagenet_data_root),
                num_classes=imagenet_counts[0],
                max_iters=max_iters,
                ckpt_interval=ckpt_interval,
                custom_hooks=list(custom_hooks)))
        return path

    return write


@pytest.fixture(scope='session')
def free_port():
    """``free_port()``: a TCP port nobody listens on now, for torchrun's rendezvous."""

    def find():
        with socket.socket() as sock:
            sock.bind(('127.0.0.1', 0))
            return sock.getsockname()[1]

    return find


@pytest.fixture(scope='session')
def tool_env():
    """``tool_env(config_path, **extra) -> env`` for a tool subprocess: one thread per
    process, the helper hooks next to the config importable, no unsafe-load switch."""

    def make(config_path, **extra):
        env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHON=sys.executable)
        env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
        paths = [str(osp.dirname(config_path)), REPO, env.get('PYTHONPATH', '')]
        env['PYTHONPATH'] = os.pathsep.join(p for p in paths if p)
        env.update(extra)
        return env

    return make


@pytest.fixture(scope='session')
def run_tool():
    """``run_tool(['train.py', cfg, ...], env)`` or ``run_tool(['dist_train.sh', ...], env)``
    -> CompletedProcess with the output in ``.stdout``."""

    def run(args, env):
        script = osp.join(TOOLS, args[0])
        cmd = ['bash', script] if script.endswith('.sh') else [sys.executable, script]
        return subprocess.run(
            cmd + [str(a) for a in args[1:]],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TOOL_TIMEOUT_S)

    return run
