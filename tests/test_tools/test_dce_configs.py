"""Dynamic channel execution end to end through the tools on generated data: the ResNet-50 CUCB
config on SVHN (a few iterations, the bandit's state in the checkpoints and the log), resumed
from a checkpoint to the same bandit state an uninterrupted run reaches, tools/test.py on the
result, single-stage training (the topology fixed after the first epoch); and for one config per
dataset (ResNet-50 / SVHN, VGG-19 / CIFAR-10, DenseNet-121 / CIFAR-100) train -> export
(tools/export_pruned.py) -> fine-tune the compact network with the -ft config -> test."""
import glob
import json
import os.path as osp

import pytest
from mmengine.runner.checkpoint import _load_checkpoint

from mmmod.datasets import make_cifar10, make_cifar100, make_svhn

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = 'configs/dce/resnet50-dce-p30_1xb64_svhn.py'
FINE_TUNE = 'configs/dce/resnet50-dce-p30-ft_1xb64_svhn.py'
SINGLE_STAGE = 'configs/dce/resnet50-dce-p30-single_1xb64_svhn.py'
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
{hooks}
randomness = dict(seed=0, deterministic=False)
'''
BANDIT_HOOK = "custom_hooks = [dict(type='ChannelBanditHook', log_interval=1)]"
BANDIT_STATE = ('backbone.bandit.counts', 'backbone.bandit.means', 'backbone.bandit.step')


@pytest.fixture(scope='module')
def svhn(tmp_path_factory):
    return make_svhn(tmp_path_factory.mktemp('svhn'), num_images=(8, 4, 4))


@pytest.fixture(scope='module')
def cifar10(tmp_path_factory):
    return make_cifar10(tmp_path_factory.mktemp('cifar10'), num_train_per_class=1,
                        num_test_per_class=1)


@pytest.fixture(scope='module')
def cifar100(tmp_path_factory):
    return make_cifar100(tmp_path_factory.mktemp('cifar100'), num_train_per_class=1,
                         num_test_per_class=1)


def _config(directory, root, epochs, base=CONFIG, hooks=BANDIT_HOOK, extra=''):
    path = directory / f'{osp.basename(base)[:-3]}_tiny_{epochs}ep.py'
    path.write_text(TINY.format(base=osp.join(REPO, base), root=root, epochs=epochs,
                                hooks=hooks) + extra)
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
    plot = run_tool(['analysis/plot_dce.py', tmp_path / 'straight', '--out',
                     tmp_path / 'layers.png'], tool_env(straight_cfg))
    assert plot.returncode == 0, plot.stdout[-4000:]
    assert 'wrote' in plot.stdout and '6 records, 33 layers' in plot.stdout  # stem + 2 x 16
    assert (tmp_path / 'layers.png').stat().st_size > 1000
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


# One CUCB config per dataset, small: (CUCB config, its -ft config, data fixture, the TINY
# overrides of the model and of the datasets). VGG has no width argument: its first two stages
# (64, 64 | 128, 128); DenseNet a tiny arch (growth 4, two layers a stage).
PIPELINES = {
    'resnet50-svhn': ('configs/dce/resnet50-dce-p30_1xb64_svhn.py', FINE_TUNE, 'svhn', dict(
        model='dict(backbone=dict(stem_channels=16, base_channels=8), '
              'head=dict(in_channels=256))')),
    'vgg19-cifar10': ('configs/dce/vgg19bn-dce-p40_1xb64_cifar10.py',
                      'configs/dce/vgg19bn-dce-p40-ft_1xb64_cifar10.py', 'cifar10', dict(
                          model='dict(backbone=dict(num_stages=2, dilations=(1, 1), '
                                'out_indices=(1, )), head=dict(in_channels=128))',
                          dataset=', verify_md5=False')),
    'densenet121-cifar100': ('configs/dce/densenet121-dce-p40_1xb64_cifar100.py',
                             'configs/dce/densenet121-dce-p40-ft_1xb64_cifar100.py', 'cifar100',
                             dict(model='dict(backbone=dict(arch=dict(_delete_=True, '
                                        'growth_rate=4, depths=[2, 2, 2, 2], init_channels=8), '
                                        'bn_size=2), head=dict(in_channels=16))',
                                  dataset=', verify_md5=False')),
}
PIPELINE_TINY = '''
_base_ = {base!r}
model = {model}
train_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(data_root={root!r}{dataset}))
val_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(data_root={root!r}{dataset}))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1),
                     logger=dict(type='LoggerHook', interval=1))
randomness = dict(seed=0)
'''


@pytest.mark.parametrize('case', sorted(PIPELINES))
def test_dce_export_fine_tunes_and_tests(case, request, tmp_path, tool_env, run_tool):
    """Alg. 1 steps 12-14 through the tools: train, export the topology fixed by mean
    saliency, fine-tune the compact network with the -ft config (fresh optimizer, weights from
    the export, strict load), test it."""
    config, fine_tune, data, tiny = PIPELINES[case]
    root = request.getfixturevalue(data)

    def write(name, base, extra=''):
        path = tmp_path / name
        path.write_text(PIPELINE_TINY.format(base=osp.join(REPO, base), root=root,
                                             dataset=tiny.get('dataset', ''),
                                             model=tiny['model']) + extra)
        return path

    train_cfg = write('dce.py', config)
    train = run_tool(['train.py', train_cfg, '--work-dir', tmp_path / 'dce'],
                     tool_env(train_cfg))
    assert train.returncode == 0, train.stdout[-4000:]
    trained = _load_checkpoint(str(tmp_path / 'dce' / 'epoch_1.pth'),
                               map_location='cpu')['state_dict']
    assert int(trained['backbone.bandit.step']) > 0  # the bandit observed the steps
    export = run_tool(['export_pruned.py', train_cfg, tmp_path / 'dce' / 'epoch_1.pth',
                       '--out-dir', tmp_path / 'pruned'], tool_env(train_cfg))
    assert export.returncode == 0, export.stdout[-4000:]
    assert 'params after / before' in export.stdout
    channels, checkpoint = (tmp_path / 'pruned' / 'dce_channels.json',
                            tmp_path / 'pruned' / 'dce_pruned.pth')
    kept = json.load(open(channels))
    assert kept['selection'] == 'mean' and kept['bandit_step'] == int(
        trained['backbone.bandit.step'])

    ft_cfg = write('ft.py', fine_tune, extra=(
        f"model['backbone']['channel_cfg'] = {str(channels)!r}\n"
        f'load_from = {str(checkpoint)!r}\n'))
    ft = run_tool(['train.py', ft_cfg, '--work-dir', tmp_path / 'ft'], tool_env(ft_cfg))
    assert ft.returncode == 0, ft.stdout[-4000:]
    assert f'Load checkpoint from {checkpoint}' in ft.stdout
    assert 'missing keys' not in ft.stdout and 'unexpected key' not in ft.stdout
    tuned = _load_checkpoint(str(tmp_path / 'ft' / 'epoch_1.pth'),
                             map_location='cpu')['state_dict']
    assert not any('bandit' in key for key in tuned)
    # the compact network: only the kept channels' parameters are left
    size = lambda state: sum(v.numel() for k, v in state.items()  # noqa: E731
                             if 'bandit' not in k and v.is_floating_point())
    assert size(tuned) < 0.8 * size(trained)

    test = run_tool(['test.py', ft_cfg, tmp_path / 'ft' / 'epoch_1.pth', '--work-dir',
                     tmp_path / 'test'], tool_env(ft_cfg))
    assert test.returncode == 0, test.stdout[-4000:]
    metrics = glob.glob(str(tmp_path / 'test' / '*' / '*.json'))
    assert len(metrics) == 1 and 'accuracy/top1' in json.load(open(metrics[0]))


def test_single_stage_fixes_the_topology(svhn, tmp_path, tool_env, run_tool):
    """``ChannelBanditHook(fix_at_epoch=1)``: the bandit observes epoch 0 only; in epoch 1 the
    same model trains its fixed topology, so the channels outside it stay as they were."""
    cfg = _config(tmp_path, svhn, epochs=2, base=SINGLE_STAGE,
                  hooks="custom_hooks = [dict(type='ChannelBanditHook', fix_at_epoch=1)]")
    run = run_tool(['train.py', cfg, '--work-dir', tmp_path / 'single'], tool_env(cfg))
    assert run.returncode == 0, run.stdout[-4000:]
    first = _load_checkpoint(str(tmp_path / 'single' / 'epoch_1.pth'), map_location='cpu')
    second = _load_checkpoint(str(tmp_path / 'single' / 'epoch_2.pth'), map_location='cpu')
    assert int(first['state_dict']['backbone.bandit.step']) == 3  # epoch 0's 3 iterations
    assert int(second['state_dict']['backbone.bandit.step']) == 3  # nothing observed after
    assert second['state_dict']['backbone.bandit.means'].equal(
        first['state_dict']['backbone.bandit.means'])

    from mmmod.models.backbones import BanditResNet
    model = BanditResNet(depth=50, stem_channels=16, base_channels=8, ratio=0.3)
    model.load_state_dict({k[len('backbone.'):]: v for k, v in first['state_dict'].items()
                           if k.startswith('backbone.')})
    fixed = dict(zip([(a.site, a.position) for a in model.arms], model.fixed_masks()))
    mask = fixed[('layer2.1', 'conv1')]
    key = 'backbone.layer2.1.conv1.weight'
    before, after = first['state_dict'][key], second['state_dict'][key]
    assert before[~mask].equal(after[~mask])  # outside the fixed topology: untouched
    assert not before[mask].equal(after[mask])  # inside: trained
