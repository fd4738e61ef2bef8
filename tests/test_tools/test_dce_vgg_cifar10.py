"""Dynamic channel execution of VGG-19 end to end on generated CIFAR-10: the p40 config (its
first two stages only: 4 of VGG-19's conv layers, 64 and 128 wide) trains 2 epochs through
tools/train.py, tools/export_pruned.py writes its compact PrunedVGG, the -ft config fine-tunes
it 1 epoch from the export (strict load, the baseline's head) and tools/test.py tests it."""
import glob
import json
import os.path as osp

import pytest
from mmengine.runner.checkpoint import _load_checkpoint

from mmmod.datasets import make_cifar10

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = 'configs/dce/vgg19bn-dce-p40_1xb64_cifar10.py'
FT_CONFIG = 'configs/dce/vgg19bn-dce-p40-ft_1xb64_cifar10.py'
# 20 train / 10 test images, batch 4: 5 iterations an epoch. VGG has no width argument: two
# stages (64, 64 | 128, 128) keep it small; 128 channels reach the head.
TINY = '''
_base_ = {base!r}
model = dict(backbone=dict(num_stages=2, dilations=(1, 1), out_indices=(1, ){backbone}),
             head=dict(in_channels=128))
train_dataloader = dict(batch_size=4, num_workers=0,
                        dataset=dict(data_root={root!r}, verify_md5=False))
val_dataloader = dict(batch_size=4, num_workers=0,
                      dataset=dict(data_root={root!r}, verify_md5=False))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs={epochs})
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1),
                     logger=dict(type='LoggerHook', interval=1))
randomness = dict(seed=0)
'''


@pytest.fixture(scope='module')
def cifar10(tmp_path_factory):
    return make_cifar10(tmp_path_factory.mktemp('cifar10'), num_train_per_class=2,
                        num_test_per_class=1)


def _config(path, base, root, epochs, backbone='', extra=''):
    path.write_text(TINY.format(base=osp.join(REPO, base), root=root, epochs=epochs,
                                backbone=backbone) + extra)
    return path


def test_dce_vgg_trains_exports_fine_tunes_and_tests(cifar10, tmp_path, tool_env, run_tool):
    cfg = _config(tmp_path / 'vgg_p40.py', CONFIG, cifar10, epochs=2,
                  extra="custom_hooks = [dict(type='ChannelBanditHook', log_interval=1)]\n")
    train = run_tool(['train.py', cfg, '--work-dir', tmp_path / 'dce'], tool_env(cfg))
    assert train.returncode == 0, train.stdout[-4000:]
    assert 'bandit_active_stage1' in train.stdout and 'bandit_active_stage2' in train.stdout
    state = _load_checkpoint(str(tmp_path / 'dce' / 'epoch_2.pth'),
                             map_location='cpu')['state_dict']
    assert int(state['backbone.bandit.step']) == 10  # 2 epochs x 5 iterations
    assert int(state['backbone.bandit.counts'].sum()) == 10 * int(0.4 * (64 * 2 + 128 * 2))

    export = run_tool(['export_pruned.py', cfg, tmp_path / 'dce' / 'epoch_2.pth', '--out-dir',
                       tmp_path / 'pruned', '--shape', '32'], tool_env(cfg))
    assert export.returncode == 0, export.stdout[-4000:]
    channels = tmp_path / 'pruned' / 'vgg_p40_channels.json'
    checkpoint = tmp_path / 'pruned' / 'vgg_p40_pruned.pth'
    assert channels.is_file() and checkpoint.is_file()
    kept = json.load(open(channels))
    assert kept['selection'] == 'mean' and kept['depth'] == 19
    assert sum(len(b['output']) for b in kept['blocks'].values()) == int(0.4 * 384)

    ft_cfg = _config(tmp_path / 'vgg_p40_ft.py', FT_CONFIG, cifar10, epochs=1,
                     backbone=f', channel_cfg={str(channels)!r}',
                     extra=f'load_from = {str(checkpoint)!r}\n')
    ft = run_tool(['train.py', ft_cfg, '--work-dir', tmp_path / 'ft'], tool_env(ft_cfg))
    assert ft.returncode == 0, ft.stdout[-4000:]
    assert 'Load checkpoint from' in ft.stdout
    assert 'missing keys' not in ft.stdout and 'unexpected key' not in ft.stdout
    ft_state = _load_checkpoint(str(tmp_path / 'ft' / 'epoch_1.pth'),
                                map_location='cpu')['state_dict']
    assert ft_state['backbone.features.4.conv.weight'].shape[0] == \
        len(kept['blocks']['features.4']['output'])

    test = run_tool(['test.py', ft_cfg, tmp_path / 'ft' / 'epoch_1.pth', '--work-dir',
                     tmp_path / 'test'], tool_env(ft_cfg))
    assert test.returncode == 0, test.stdout[-4000:]
    metrics = glob.glob(str(tmp_path / 'test' / '*' / '*.json'))
    assert len(metrics) == 1 and 'accuracy/top1' in json.load(open(metrics[0]))
