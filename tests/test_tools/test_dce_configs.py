"""Dynamic channel execution end to end: the ResNet-50 CUCB config on generated SVHN through
tools/train.py (a few iterations, the bandit's state in the checkpoints and the log), resumed
from a checkpoint to the same bandit state an uninterrupted run reaches, and tools/test.py on
the result."""
import glob
import json
import os.path as osp

import pytest
from mmengine.runner.checkpoint import _load_checkpoint

from mmmod.datasets import make_svhn

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = 'configs/dce/resnet50-dce-p30_1xb64_svhn.py'
# 8 train + 4 extra images, batch 4: 3 iterations an epoch; tiny widths keep it fast. No
# augmentation: the crops and flips draw from numpy's global generator, whose state mmengine's
# resume does not restore, so a resumed run would see other crops than an uninterrupted one.
TINY = '''
_base_ = {base!r}
model = dict(backbone=dict(stem_channels=16, base_channels=8), head=dict(in_channels=256))
train_dataloader = dict(batch_size=4, num_workers=0,
                        dataset=dict(data_root={root!r}, pipeline=[dict(type='PackInputs')]))
val_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(data_root={root!r}))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs={epochs})
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1),
                     logger=dict(type='LoggerHook', interval=1))
custom_hooks = [dict(type='ChannelBanditHook', log_interval=1)]
randomness = dict(seed=0, deterministic=False)
'''
BANDIT_STATE = ('backbone.bandit.counts', 'backbone.bandit.means', 'backbone.bandit.step')


@pytest.fixture(scope='module')
def svhn(tmp_path_factory):
    return make_svhn(tmp_path_factory.mktemp('svhn'), num_images=(8, 4, 4))


def _config(directory, root, epochs):
    path = directory / f'dce_tiny_{epochs}ep.py'
    path.write_text(TINY.format(base=osp.join(REPO, CONFIG), root=root, epochs=epochs))
    return path


def _state(checkpoint):
    state = _load_checkpoint(str(checkpoint), map_location='cpu')['state_dict']
    return {key: state[key] for key in BANDIT_STATE}


def test_dce_config_trains_resumes_and_tests(svhn, tmp_path, tool_env, run_tool):
    straight_cfg = _config(tmp_path, svhn, epochs=2)
    straight = run_tool(['train.py', straight_cfg, '--work-dir', tmp_path / 'straight'],
                        tool_env(straight_cfg))
    assert straight.returncode == 0, straight.stdout[-4000:]
    assert 'bandit_active_layer1' in straight.stdout and 'bandit_untried' in straight.stdout
    final = _state(tmp_path / 'straight' / 'epoch_2.pth')
    assert int(final['backbone.bandit.step']) == 6  # 2 epochs x 3 iterations
    assert int(final['backbone.bandit.counts'].sum()) > 0

    # stop after epoch 1, then resume to epoch 2: the same bandit state as the straight run
    first_cfg = _config(tmp_path, svhn, epochs=1)
    first = run_tool(['train.py', first_cfg, '--work-dir', tmp_path / 'resumed'],
                     tool_env(first_cfg))
    assert first.returncode == 0, first.stdout[-4000:]
    resumed = run_tool(['train.py', straight_cfg, '--work-dir', tmp_path / 'resumed',
                        '--resume'], tool_env(straight_cfg))
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert 'resumed epoch: 1' in resumed.stdout
    again = _state(tmp_path / 'resumed' / 'epoch_2.pth')
    for key in BANDIT_STATE:
        assert again[key].equal(final[key]), key

    test = run_tool(['test.py', straight_cfg, tmp_path / 'straight' / 'epoch_2.pth',
                     '--work-dir', tmp_path / 'test'], tool_env(straight_cfg))
    assert test.returncode == 0, test.stdout[-4000:]
    metrics = glob.glob(str(tmp_path / 'test' / '*' / '*.json'))
    assert len(metrics) == 1 and 'accuracy/top1' in json.load(open(metrics[0]))
