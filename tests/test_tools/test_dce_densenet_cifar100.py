"""Dynamic channel execution of DenseNet end to end on generated CIFAR-100: the p40 config (a
tiny arch) trains 2 epochs through tools/train.py, tools/export_pruned.py writes its compact
PrunedDenseNet, the -ft config fine-tunes it 1 epoch from the export and tools/test.py tests
the result."""
import glob
import json
import os.path as osp

import pytest
from mmengine.runner.checkpoint import _load_checkpoint

from mmmod.datasets import make_cifar100

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = 'configs/dce/densenet121-dce-p40_1xb64_cifar100.py'
FT_CONFIG = 'configs/dce/densenet121-dce-p40-ft_1xb64_cifar100.py'
# 100 train / 100 test images, batch 10: 10 iterations an epoch. Four stages of two layers,
# growth 4: 16 channels reach the head.
TINY = '''
_base_ = {base!r}
model = dict(backbone=dict(arch=dict(_delete_=True, growth_rate=4, depths=[2, 2, 2, 2],
                                     init_channels=8), bn_size=2{backbone}),
             head=dict(in_channels=16))
train_dataloader = dict(batch_size=10, num_workers=0,
                        dataset=dict(data_root={root!r}, verify_md5=False))
val_dataloader = dict(batch_size=10, num_workers=0,
                      dataset=dict(data_root={root!r}, verify_md5=False))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs={epochs})
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1),
                     logger=dict(type='LoggerHook', interval=1))
randomness = dict(seed=0)
'''


@pytest.fixture(scope='module')
def cifar100(tmp_path_factory):
    return make_cifar100(tmp_path_factory.mktemp('cifar100'), num_train_per_class=1,
                         num_test_per_class=1)


def _config(path, base, root, epochs, backbone='', extra=''):
    path.write_text(TINY.format(base=osp.join(REPO, base), root=root, epochs=epochs,
                                backbone=backbone) + extra)
    return path


def test_dce_densenet_trains_exports_fine_tunes_and_tests(cifar100, tmp_path, tool_env,
                                                          run_tool):
    cfg = _config(tmp_path / 'dn_p40.py', CONFIG, cifar100, epochs=2,
                  extra="custom_hooks = [dict(type='ChannelBanditHook', log_interval=1)]\n")
    train = run_tool(['train.py', cfg, '--work-dir', tmp_path / 'dce'], tool_env(cfg))
    assert train.returncode == 0, train.stdout[-4000:]
    assert 'bandit_active_stage1' in train.stdout and 'bandit_untried' in train.stdout
    state = _load_checkpoint(str(tmp_path / 'dce' / 'epoch_2.pth'),
                             map_location='cpu')['state_dict']
    assert int(state['backbone.bandit.step']) == 20  # 2 epochs x 10 iterations

    export = run_tool(['export_pruned.py', cfg, tmp_path / 'dce' / 'epoch_2.pth', '--out-dir',
                       tmp_path / 'pruned', '--shape', '32'], tool_env(cfg))
    assert export.returncode == 0, export.stdout[-4000:]
    channels = tmp_path / 'pruned' / 'dn_p40_channels.json'
    checkpoint = tmp_path / 'pruned' / 'dn_p40_pruned.pth'
    assert channels.is_file() and checkpoint.is_file()
    assert json.load(open(channels))['selection'] == 'mean'

    ft_cfg = _config(tmp_path / 'dn_p40_ft.py', FT_CONFIG, cifar100, epochs=1,
                     backbone=f', channel_cfg={str(channels)!r}',
                     extra=f'load_from = {str(checkpoint)!r}\n')
    ft = run_tool(['train.py', ft_cfg, '--work-dir', tmp_path / 'ft'], tool_env(ft_cfg))
    assert ft.returncode == 0, ft.stdout[-4000:]
    assert 'Load checkpoint from' in ft.stdout
    assert 'missing keys' not in ft.stdout and 'unexpected key' not in ft.stdout

    test = run_tool(['test.py', ft_cfg, tmp_path / 'ft' / 'epoch_1.pth', '--work-dir',
                     tmp_path / 'test'], tool_env(ft_cfg))
    assert test.returncode == 0, test.stdout[-4000:]
    metrics = glob.glob(str(tmp_path / 'test' / '*' / '*.json'))
    assert len(metrics) == 1 and 'accuracy/top1' in json.load(open(metrics[0]))
