"""Save -> kill -> resume with ``tools/train.py``, then ``tools/test.py`` on a checkpoint.

Both load mmengine checkpoints through mmengine's loaders and torch's ``weights_only=True``
default, so they pass only with mmmod's safe loaders (see ``mmmod/compat/checkpoint.py``).
"""
import datetime
import glob
import json
import os.path as osp
import pickle
import re
import signal

import pytest
import torch
from mmengine.runner.checkpoint import _load_checkpoint

import mmmod  # noqa: F401  mmengine's loaders read the checkpoints here as well

MAX_ITERS = 6
CKPT_INTERVAL = 2
KILL_AT = 4

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def interrupted_run(tmp_path_factory, write_config, tool_env, run_tool):
    """A training run SIGKILLed right after the checkpoint of iteration ``KILL_AT``."""
    root = tmp_path_factory.mktemp('resume')
    config = write_config(
        root,
        max_iters=MAX_ITERS,
        ckpt_interval=CKPT_INTERVAL,
        custom_hooks=[dict(type='KillAfterIterHook', kill_at=KILL_AT)])
    work_dir = root / 'work_dir'
    proc = run_tool(['train.py', config, '--work-dir', work_dir], tool_env(config))
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]
    return config, work_dir


def _iters_logged(text):
    return [int(i) for i in re.findall(rf'Iter\(train\) \[\s*(\d+)/{MAX_ITERS}\]', text)]


def test_interrupted_run_left_checkpoint_at_kill(interrupted_run):
    _, work_dir = interrupted_run
    assert sorted(osp.basename(p) for p in glob.glob(str(work_dir / 'iter_*.pth'))) == [
        'iter_2.pth', 'iter_4.pth'
    ]
    assert (work_dir / 'last_checkpoint').read_text().strip().endswith('iter_4.pth')


def test_resume_continues_from_checkpoint(interrupted_run, tool_env, run_tool):
    config, work_dir = interrupted_run
    proc = run_tool(['train.py', config, '--work-dir', work_dir, '--resume'],
                    tool_env(config))
    assert proc.returncode == 0, proc.stdout[-3000:]

    assert f'resumed epoch: 0, iter: {KILL_AT}' in proc.stdout
    assert _iters_logged(proc.stdout) == list(range(KILL_AT + 1, MAX_ITERS + 1))
    final = _load_checkpoint(str(work_dir / f'iter_{MAX_ITERS}.pth'), map_location='cpu')
    assert final['meta']['iter'] == MAX_ITERS
    # the resumed run kept the history logged before the kill: the message hub's loss
    # buffer spans all iterations
    loss_buffer = final['message_hub']['log_scalars']['train/loss']
    assert len(loss_buffer.data[0]) == MAX_ITERS


def test_test_tool_evaluates_checkpoint(interrupted_run, tmp_path, tool_env, run_tool,
                                        imagenet_counts):
    config, work_dir = interrupted_run
    test_dir = tmp_path / 'test_dir'
    out = tmp_path / 'preds.pkl'
    proc = run_tool(
        ['test.py', config, work_dir / f'iter_{KILL_AT}.pth', '--work-dir', test_dir,
         '--out', out], tool_env(config))
    assert proc.returncode == 0, proc.stdout[-3000:]

    metrics_files = glob.glob(str(test_dir / '*' / '*.json'))
    assert len(metrics_files) == 1, metrics_files
    with open(metrics_files[0]) as f:
        metrics = json.load(f)
    assert 0 <= metrics['accuracy/top1'] <= 100
    with open(out, 'rb') as f:
        assert len(pickle.load(f)) == imagenet_counts[1]


def test_test_tool_loads_foreign_pickle_only_when_asked(interrupted_run, tmp_path,
                                                        tool_env, run_tool):
    """A checkpoint holding an object mmengine never writes (here a ``datetime.date``) is
    refused by default and loads with ``--unsafe-load-checkpoint``."""
    config, work_dir = interrupted_run
    ckpt = _load_checkpoint(str(work_dir / f'iter_{KILL_AT}.pth'), map_location='cpu')
    ckpt['meta']['date'] = datetime.date(2024, 1, 1)
    foreign = tmp_path / 'foreign.pth'
    torch.save(ckpt, foreign)

    args = ['test.py', config, foreign, '--work-dir', tmp_path / 'test_dir']
    refused = run_tool(args, tool_env(config))
    assert refused.returncode != 0
    assert 'Unsupported global: GLOBAL datetime.date' in refused.stdout

    accepted = run_tool(args + ['--unsafe-load-checkpoint'], tool_env(config))
    assert accepted.returncode == 0, accepted.stdout[-3000:]


# ResNet-34 where the checkpoint is ResNet-18 (layer1.2 and more are missing), a head for one
# class more (its weights have another shape).
OTHER_ARCH = '''
_base_ = './tiny_resnet18_cls.py'
model = dict(backbone=dict(depth=34), head=dict(num_classes={num_classes}))
data_preprocessor = dict(num_classes={num_classes})
'''


def test_test_tool_refuses_checkpoint_of_another_architecture(interrupted_run, tmp_path,
                                                              tool_env, run_tool,
                                                              imagenet_counts):
    config, work_dir = interrupted_run
    num_classes = imagenet_counts[0]
    other = config.parent / 'tiny_resnet34_cls.py'
    other.write_text(OTHER_ARCH.format(num_classes=num_classes + 1))
    checkpoint = work_dir / f'iter_{KILL_AT}.pth'
    args = ['test.py', other, checkpoint, '--work-dir', tmp_path / 'test_dir']

    refused = run_tool(args, tool_env(other))
    assert refused.returncode != 0
    out = refused.stdout
    assert 'CheckpointMismatchError' in out, out[-4000:]
    assert f'{checkpoint} does not fit the model of this config (ImageClassifier with ResNet ' \
           'backbone)' in out
    assert f'head.fc.weight: ({num_classes}, 512) vs ({num_classes + 1}, 512)' in out
    assert 'backbone.layer1.2.conv1.weight (64, 64, 3, 3)' in out  # the first missing key
    assert not glob.glob(str(tmp_path / 'test_dir' / '*' / '*.json'))  # no metrics written

    loaded = run_tool(args + ['--non-strict'], tool_env(other))
    assert loaded.returncode == 0, loaded.stdout[-4000:]
    assert 'size mismatch for head.fc.weight' in loaded.stdout  # mmengine's warning
    assert len(glob.glob(str(tmp_path / 'test_dir' / '*' / '*.json'))) == 1
