"""The channel-gating configs end to end on the session's generated data: one gated config per
task through the stock user-config template of its task (test_stock_configs.py, ``_base_``
pointed at the gated config, as test_paper_configs.py does for MoD): train 2 iterations, test,
and the gate statistics are in the training log and the test metrics. Then the annealing hook
changes the target during a tools/train.py run, and tools/recalibrate_bn.py turns the trained
checkpoint into one tools/test.py evaluates."""
import glob
import importlib.util
import json
import os.path as osp
import re

import pytest
import torch
from mmengine.runner.checkpoint import _load_checkpoint

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _stock_tests():
    """test_stock_configs.py, whose user-config templates and checks are reused here."""
    path = osp.join(osp.dirname(osp.abspath(__file__)), 'test_stock_configs.py')
    spec = importlib.util.spec_from_file_location('mmmod_test_stock_configs_gating', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STOCK = _stock_tests()
# The ImageNet gated configs fine-tune from a downloaded ResNet-50: start from scratch here.
NO_DOWNLOAD = '\nmodel = dict(backbone=dict(init_cfg=None))\n'
# gated config -> (its stock case, text appended to the template)
GATE_CASES = {
    'configs/gating/resnet50-gate-dep-t05_8xb32_in1k.py':
    ('mmpretrain-resnet50-in1k', NO_DOWNLOAD),
    # the stock template sets model.pretrained=None: mmseg hands the backbone no checkpoint
    'configs/gating/fcn_r50-gate-dep-t05-d8_4xb2-80k_cityscapes-512x1024.py':
    ('mmseg-fcn-r50-cityscapes', ''),
    # the stock template sets model.backbone.init_cfg=None
    'configs/gating/faster-rcnn_r50-gate-dep-t05_fpn_1x_voc0712.py':
    ('mmdet-faster-rcnn-r50-voc0712', ''),
}
GATE_METRICS = ('gate/rate', 'gate/flops_ratio', 'gate/gflops', 'gate/gate_net_gflops')


def gate_case(config, extra=''):
    """The stock case of ``config``'s task, the template's ``_base_`` set to ``config``."""
    stock_id, tail = GATE_CASES[config]
    case = STOCK.CASES[stock_id]
    template, count = re.subn(r"^_base_ = '[^']*'$", f'_base_ = {osp.join(REPO, config)!r}',
                              case.template, count=1, flags=re.M)
    assert count == 1
    return case._replace(template=template + tail + extra)


def _test_metrics(test_dir):
    files = glob.glob(str(test_dir / '*' / '*.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return json.load(f)


def _check_gate_metrics(metrics):
    for key in GATE_METRICS:
        assert isinstance(metrics.get(key), float), (key, metrics)
    assert 0 < metrics['gate/rate'] <= 1 and 0 < metrics['gate/flops_ratio'] <= 1, metrics
    assert metrics['gate/gflops'] > metrics['gate/gate_net_gflops'] > 0, metrics


@pytest.mark.parametrize('config', GATE_CASES, ids=lambda c: osp.basename(c)[:-3])
def test_gated_config_trains_and_tests(config, request, tmp_path, tool_env, run_tool):
    STOCK.test_stock_config_trains_and_tests(gate_case(config), request, tmp_path, tool_env,
                                             run_tool)
    logged = [r for r in STOCK._logged_scalars(tmp_path / 'train') if 'loss' in r]
    assert all(0 < r['gate_rate'] <= 1 and r['gate_loss'] >= 0 for r in logged), logged
    _check_gate_metrics(_test_metrics(tmp_path / 'test'))


ANNEAL = '''
custom_hooks = [
    dict(type='GateStatsHook'),
    dict(type='GateTargetHook', start=0.9, step=0.1, interval=1, by_epoch=False),
]
'''


def test_annealing_then_bn_recalibration(imagenet_data_root, tmp_path, tool_env, run_tool):
    config = 'configs/gating/resnet50-gate-dep-t05_8xb32_in1k.py'
    case = gate_case(config, ANNEAL)
    path = tmp_path / 'user_config.py'
    path.write_text(case.template.format(data_root=str(imagenet_data_root)))
    env = tool_env(path, **STOCK.THREADS)

    train = run_tool(['train.py', path, '--work-dir', tmp_path / 'train'], env)
    assert train.returncode == 0, train.stdout[-4000:]
    logged = [r for r in STOCK._logged_scalars(tmp_path / 'train') if 'loss' in r]
    assert [r['gate_target'] for r in logged] == pytest.approx([0.9, 0.8])
    checkpoint = (tmp_path / 'train' / 'last_checkpoint').read_text().strip()

    out = tmp_path / 'recal.pth'
    recal = run_tool(['recalibrate_bn.py', path, checkpoint, '--num-batches', '3', '--out', out,
                      '--work-dir', tmp_path / 'recal'], env)
    assert recal.returncode == 0, recal.stdout[-4000:]
    trained = _load_checkpoint(str(checkpoint), map_location='cpu')['state_dict']
    recalibrated = _load_checkpoint(str(out), map_location='cpu')
    assert recalibrated['meta']['bn_recalibration']['num_batches'] == 3
    state = recalibrated['state_dict']
    assert set(state) == set(trained)
    for key, value in trained.items():
        if key.endswith(('running_mean', 'running_var')):
            assert not torch.equal(value, state[key]), key
        elif not key.endswith('num_batches_tracked'):
            assert torch.equal(value, state[key]), key

    test = run_tool(['test.py', path, out, '--work-dir', tmp_path / 'test'], env)
    assert test.returncode == 0, test.stdout[-4000:]
    metrics = _test_metrics(tmp_path / 'test')
    assert 0 <= metrics['accuracy/top1'] <= 100
    _check_gate_metrics(metrics)


def test_ensemble_config_averages_stochastic_passes(imagenet_data_root, tmp_path):
    """The ensemble config through tools/test.py's --tta transformation: every image runs the
    5 identical branches with stochastic gates, and the TTA wrapper averages their scores."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from mmmod.engine import find_gated_backbone
    from mmmod.engine.runner import apply_test_args
    config = osp.join(REPO, 'configs/gating/resnet50-gate-dep-t05-ens5_8xb32_in1k.py')
    cfg = Config.fromfile(config)
    cfg = apply_test_args(cfg, None, work_dir=str(tmp_path), tta=True)
    cfg.load_from = None  # no checkpoint: random weights are enough to exercise the passes
    cfg.test_dataloader.update(batch_size=1, num_workers=0, persistent_workers=False)
    cfg.test_dataloader.dataset.data_root = str(imagenet_data_root)
    cfg.experiment_name = f'ens5-{tmp_path.name}'
    runner = Runner.from_cfg(cfg)
    assert type(runner.model).__name__ == 'AverageClsScoreTTA'
    backbone = find_gated_backbone(runner.model)
    assert backbone.gate_mode == 'stochastic'
    rates = []  # activation rate of every backbone forward
    backbone.register_forward_hook(lambda m, a, o: rates.append(m.gate_stats['gate_rate']))
    metrics = runner.test()
    assert 'accuracy/top1' in metrics and 'gate/rate' in metrics
    assert len(rates) == 4 * 5, 'one forward per image and pass'
    assert len(set(rates)) > 1, 'stochastic gates: the passes differ'
