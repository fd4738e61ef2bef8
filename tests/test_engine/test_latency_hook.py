"""LatencyHook: latency keys land in the test metrics and the json, results stay unchanged."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from mmmod.engine.hooks import LatencyHook

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# Few, short measurements: the tests check the wiring, not the numbers.
FAST = dict(warmup=1, repeats=3, number=1, num_threads=1)
# Bounds a hung subprocess; no normal run comes near it, even on a loaded machine.
HANG_TIMEOUT_S = 30 * 60


def tiny_cfg(data_root, work_dir, custom_hooks=()):
    """An mmpretrain ResNet18-MoD classifier over the tiny ImageNet (4 classes, 64x64)."""
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
    loader = dict(
        batch_size=2, num_workers=0,
        dataset=dict(type='ImageNet', data_root=str(data_root), split='val', pipeline=pipeline),
        sampler=dict(type='DefaultSampler', shuffle=False))
    return dict(
        default_scope='mmpretrain',
        custom_imports=dict(imports=['mmmod'], allow_failed_imports=False),
        model=dict(
            type='ImageClassifier',
            backbone=dict(type='ResNetMoD', depth=18),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=4, in_channels=512,
                      loss=dict(type='CrossEntropyLoss'), topk=(1, ))),
        data_preprocessor=dict(num_classes=4, mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], to_rgb=True),
        test_dataloader=loader,
        test_evaluator=dict(type='Accuracy', topk=(1, )),
        test_cfg=dict(),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=list(custom_hooks),
        log_processor=dict(by_epoch=False),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo')),
        randomness=dict(seed=0),
        work_dir=str(work_dir),
        log_level='WARNING')


def run_test(cfg):
    runner = Runner.from_cfg(Config(cfg))
    metrics = runner.test()
    jsons = glob.glob(osp.join(runner.log_dir, '*.json'))
    assert len(jsons) == 1, jsons
    with open(jsons[0]) as f:
        logged = json.load(f)
    return metrics, logged


def test_latency_in_metrics_and_json_results_unchanged(imagenet_data_root, tmp_path):
    plain, plain_json = run_test(tiny_cfg(imagenet_data_root, tmp_path / 'plain'))
    hook = dict(type='LatencyHook', **FAST)
    timed, timed_json = run_test(tiny_cfg(imagenet_data_root, tmp_path / 'timed', [hook]))

    for source in (timed, timed_json):
        assert source['latency/cpu_ms'] > 0
        assert source['latency/cpu_ms_iqr'] >= 0
        assert source['latency/threads'] == 1
        assert source['latency/batch_size'] == 1
    assert not any(key.startswith('latency/') for key in plain)
    # the hook never changes the model's results
    assert timed['accuracy/top1'] == plain['accuracy/top1']
    assert timed_json['accuracy/top1'] == plain_json['accuracy/top1']


def test_measure_leaves_model_untouched():
    from mmmod.analysis.benchmark import build_classifier
    model = build_classifier('resnet18-mod', num_classes=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = dict(inputs=[torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)] * 3,
                 data_samples=None)
    hook = LatencyHook(batch_size=2, **FAST)
    rng = torch.get_rng_state()
    out = hook.measure(model, hook_batch(hook, batch))
    assert out['latency/batch_size'] == 2 and out['latency/cpu_ms'] > 0
    assert torch.equal(rng, torch.get_rng_state())
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def hook_batch(hook, batch):
    hook._capture(0, batch)
    return hook._batch


def test_cuda_without_cuda_is_skipped(monkeypatch):
    from mmmod.analysis.benchmark import build_classifier
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    model = build_classifier('resnet18-mod', num_classes=4).eval()
    hook = LatencyHook(devices=('cpu', 'cuda'), **FAST)
    out = hook.measure(model, dict(inputs=torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
                                   data_samples=None))
    assert 'latency/cpu_ms' in out and 'latency/cuda_ms' not in out


@pytest.mark.parametrize('kwargs, match', [
    (dict(devices=('tpu', )), 'devices must be'),
    (dict(devices=('gpu', )), 'devices must be'),
    (dict(devices=()), 'at least one device'),
    (dict(repeats=0), 'repeats must be an int >= 1'),
    (dict(number=0), 'number must be an int >= 1'),
    (dict(batch_size=0), 'batch_size must be an int >= 1'),
    (dict(warmup=-1), 'warmup must be an int >= 0'),
    (dict(num_threads=0), 'num_threads must be None or an int >= 1'),
    (dict(mode='loss'), 'mode must be one of'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatencyHook(**kwargs)


def test_registered_in_root_and_found_from_downstream_scopes():
    from mmengine.registry import HOOKS as ROOT
    from mmpretrain.registry import HOOKS as PRETRAIN
    assert ROOT.get('LatencyHook') is LatencyHook
    assert PRETRAIN.get('LatencyHook') is LatencyHook


@pytest.mark.slow
@pytest.mark.parametrize('how', ['config', 'flag'])
def test_tools_test_writes_latency_to_json(imagenet_data_root, tmp_path, how):
    """``tools/test.py`` with the hook in the config, or switched on by ``--latency``: the
    latency lands in the json."""
    Config(tiny_cfg(imagenet_data_root, tmp_path / 'work')).dump(str(tmp_path / 'base.py'))
    (tmp_path / 'timed.py').write_text(
        "_base_ = './base.py'\n"
        "custom_hooks = [dict(type='LatencyHook', warmup=1, repeats=3, num_threads=1)]\n"
        "log_level = 'INFO'\n")
    runner = Runner.from_cfg(Config(tiny_cfg(imagenet_data_root, tmp_path / 'init')))
    ckpt = tmp_path / 'init.pth'
    torch.save(dict(state_dict=runner.model.state_dict(), meta=dict()), ckpt)
    # --latency takes the hook's other arguments from latency_cfg: num_threads=1 there, where
    # the process has 2 threads, shows they arrive
    env = dict(os.environ, OMP_NUM_THREADS='1' if how == 'config' else '2', PYTHONPATH=REPO)
    cfg, extra = ((tmp_path / 'timed.py', []) if how == 'config' else
                  (tmp_path / 'base.py', ['--latency', 'cpu', '--cfg-options', 'log_level=INFO',
                                          'latency_cfg.warmup=1', 'latency_cfg.repeats=3',
                                          'latency_cfg.num_threads=1']))
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'test.py'), str(cfg),
         str(ckpt), '--work-dir', str(tmp_path / 'work'), *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:]
    (path, ) = glob.glob(str(tmp_path / 'work' / '*' / '*.json'))
    with open(path) as f:
        logged = json.load(f)
    assert logged['latency/cpu_ms'] > 0
    assert logged['latency/threads'] == 1  # num_threads=1 in the config / latency_cfg
    assert 'accuracy/top1' in logged
    assert 'LatencyHook (this process' in proc.stdout
