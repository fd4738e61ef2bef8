"""Two-process training and testing through ``tools/dist_train.sh`` and
``tools/dist_test.sh`` (torchrun) on CPU, with gloo.

Run on a machine without CUDA only: there ``mmmod.compat.setup_distributed`` creates the
gloo process group, turns the config's SyncBN into BN and wraps the model with
``device_ids=None``; with GPUs the scripts run mmengine's own launcher untouched.
"""
import glob
import json
import pickle

import pytest
import torch

NPROC = 2
MAX_ITERS = 2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.is_available(), reason='tests the CPU (gloo) path'),
]


@pytest.fixture(scope='module')
def dist_run(tmp_path_factory, write_config, tool_env, run_tool, free_port):
    root = tmp_path_factory.mktemp('dist')
    config = write_config(
        root,
        max_iters=MAX_ITERS,
        ckpt_interval=MAX_ITERS,
        custom_hooks=[dict(type='RankMarkerHook')])
    work_dir = root / 'work_dir'
    proc = run_tool(['dist_train.sh', config, NPROC, '--work-dir', work_dir],
                    tool_env(config, PORT=str(free_port())))
    return config, work_dir, proc


def test_dist_train_two_cpu_processes(dist_run):
    _, work_dir, proc = dist_run
    assert proc.returncode == 0, proc.stdout[-4000:]

    markers = [json.loads(open(p).read()) for p in sorted(glob.glob(str(work_dir / 'rank*.json')))]
    assert [m['rank'] for m in markers] == list(range(NPROC))
    for marker in markers:
        assert marker['world_size'] == NPROC
        assert marker['iter'] == MAX_ITERS
        assert marker['wrapper'] == 'MMDistributedDataParallel'
        assert marker['sync_bn'] == 0  # the config's SyncBN became BN
    # DDP averaged the gradients over gloo: both replicas hold the same weights
    assert markers[0]['checksum'] == pytest.approx(markers[1]['checksum'], rel=1e-6)

    log_files = glob.glob(str(work_dir / '*' / '*.log'))
    assert len(log_files) == 1, log_files  # rank 0 only
    log = open(log_files[0]).read()
    assert f'GPU number: {NPROC}' in log  # mmengine's name for the world size
    assert "dist_cfg: {'backend': 'gloo'}" in log
    assert (work_dir / f'iter_{MAX_ITERS}.pth').exists()


def test_dist_test_two_cpu_processes(dist_run, tmp_path, tool_env, run_tool, free_port,
                                     imagenet_counts):
    config, work_dir, _ = dist_run
    out = tmp_path / 'preds.pkl'
    proc = run_tool(
        ['dist_test.sh', config, work_dir / f'iter_{MAX_ITERS}.pth', NPROC,
         '--work-dir', tmp_path / 'test_dir', '--out', out],
        tool_env(config, PORT=str(free_port())))
    assert proc.returncode == 0, proc.stdout[-4000:]

    metrics_files = glob.glob(str(tmp_path / 'test_dir' / '*' / '*.json'))
    assert len(metrics_files) == 1, metrics_files
    assert 'accuracy/top1' in json.loads(open(metrics_files[0]).read())
    # the predictions of both ranks were gathered, each image once
    with open(out, 'rb') as f:
        assert len(pickle.load(f)) == imagenet_counts[1]
