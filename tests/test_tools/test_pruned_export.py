"""A data-independent GatedResNet-50 config end to end through the pruned export: tools/train.py
(2 iterations on the session's tiny ImageNet), tools/export_pruned.py, then tools/test.py with
the pruned config predicts what tools/test.py with the gated config predicts (gates thresholded
at 0.5). The exported checkpoint then initialises the pruned backbones of the FCN and Faster
R-CNN configs. Reuses test_gating_configs.py's helpers (its stock user-config templates)."""
import importlib.util
import os.path as osp
import pickle
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _gating_tests():
    path = osp.join(osp.dirname(osp.abspath(__file__)), 'test_gating_configs.py')
    spec = importlib.util.spec_from_file_location('mmmod_test_gating_configs_pruned', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GATING = _gating_tests()
STOCK = GATING.STOCK
GATED = 'configs/gating/resnet50-gate-ind-t05_8xb32_in1k.py'
PRUNED = 'configs/gating/resnet50-gate-ind-t05-pruned_8xb32_in1k.py'
DOWNSTREAM = ('configs/gating/fcn_r50-gate-ind-t05-pruned-d8_4xb2-80k_cityscapes-512x1024.py',
              'configs/gating/faster-rcnn_r50-gate-ind-t05-pruned_fpn_1x_voc0712.py')


def _user_config(directory, name, config, data_root, tail=''):
    """The stock ImageNet user config with ``_base_`` pointed at ``config``."""
    template, count = re.subn(r"^_base_ = '[^']*'$", f'_base_ = {osp.join(REPO, config)!r}',
                              STOCK.CASES['mmpretrain-resnet50-in1k'].template, count=1,
                              flags=re.M)
    assert count == 1
    path = directory / f'{name}.py'
    path.write_text(template.format(data_root=str(data_root)) + tail)
    return path


def _predictions(path):
    with open(path, 'rb') as f:
        return torch.stack([torch.as_tensor(r['pred_score']) for r in pickle.load(f)])


@pytest.fixture(scope='module')
def exported(tmp_path_factory, imagenet_data_root, tool_env, run_tool):
    """Train the gated config 2 iterations, switch about half its gates off (2 iterations
    cannot move logits initialised 98% on), test it, export it: returns the paths and the
    gated model's test metrics and predictions."""
    work = tmp_path_factory.mktemp('pruned-export')
    gated_cfg = _user_config(work, 'gated', GATED, imagenet_data_root, GATING.NO_DOWNLOAD)
    env = tool_env(gated_cfg, **STOCK.THREADS)
    train = run_tool(['train.py', gated_cfg, '--work-dir', work / 'train'], env)
    assert train.returncode == 0, train.stdout[-4000:]
    trained = (work / 'train' / 'last_checkpoint').read_text().strip()

    checkpoint = _load_checkpoint(str(trained), map_location='cpu')
    generator = torch.Generator().manual_seed(0)
    logits = [k for k in checkpoint['state_dict'] if k.endswith('.gate.logits')]
    assert len(logits) == 16  # one head per block of ResNet-50
    for key in logits:
        value = checkpoint['state_dict'][key]
        value[:, 1] = value[:, 0] + torch.randn(value.shape[0], generator=generator)
    torch.save(checkpoint, work / 'gated.pth')

    test = run_tool(['test.py', gated_cfg, work / 'gated.pth', '--work-dir', work / 'test',
                     '--out', work / 'gated.pkl'], env)
    assert test.returncode == 0, test.stdout[-4000:]
    export = run_tool(['export_pruned.py', gated_cfg, work / 'gated.pth', '--out-dir',
                       work / 'export', '--shape', '64'], env)
    assert export.returncode == 0, export.stdout[-4000:]
    assert 'MACs after / before' in export.stdout, export.stdout[-2000:]
    return dict(work=work, env=env, metrics=GATING._test_metrics(work / 'test'),
                predictions=_predictions(work / 'gated.pkl'),
                channels=work / 'export' / 'gated_channels.json',
                checkpoint=work / 'export' / 'gated_pruned.pth')


def test_pruned_config_predicts_as_the_thresholded_gated_model(exported, imagenet_data_root,
                                                               run_tool):
    work = exported['work']
    tail = f"\nmodel = dict(backbone=dict(channel_cfg={str(exported['channels'])!r}))\n"
    pruned_cfg = _user_config(work, 'pruned', PRUNED, imagenet_data_root, tail)
    test = run_tool(['test.py', pruned_cfg, exported['checkpoint'], '--work-dir',
                     work / 'test-pruned', '--out', work / 'pruned.pkl'], exported['env'])
    assert test.returncode == 0, test.stdout[-4000:]
    metrics = GATING._test_metrics(work / 'test-pruned')
    gated = exported['metrics']
    assert gated['gate/rate'] < 0.9  # the gated model really ran with gates off
    assert metrics['accuracy/top1'] == gated['accuracy/top1']
    expected, got = exported['predictions'], _predictions(work / 'pruned.pkl')
    assert expected.shape == got.shape and expected.shape[0] > 1
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    # the exported network is smaller
    state = _load_checkpoint(str(exported['checkpoint']), map_location='cpu')['state_dict']
    assert state['backbone.layer4.1.conv2.weight'].shape[0] < 512
    assert not any('.gate.' in k for k in state)


@pytest.mark.parametrize('config', DOWNSTREAM, ids=lambda c: osp.basename(c)[:-3])
def test_export_initialises_downstream_pruned_backbone(config, exported):
    cfg = Config.fromfile(osp.join(REPO, config))
    backbone = cfg.model.backbone
    # the config names the files the ImageNet export writes
    assert osp.basename(backbone.channel_cfg) == osp.basename(PRUNED).replace(
        '-pruned_8xb32_in1k.py', '_8xb32_in1k_channels.json')
    assert osp.basename(backbone.init_cfg.checkpoint) == osp.basename(
        backbone.channel_cfg).replace('_channels.json', '_pruned.pth')
    backbone.channel_cfg = str(exported['channels'])
    backbone.init_cfg.checkpoint = str(exported['checkpoint'])
    init_default_scope(cfg.default_scope)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        from mmengine.registry import MODELS
        model = MODELS.build(cfg.model)
    model.init_weights()
    state = _load_checkpoint(str(exported['checkpoint']), map_location='cpu')['state_dict']
    expected = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    loaded = model.backbone.state_dict()
    assert set(expected) == set(loaded)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.rand(1, 3, 64, 64))
    assert all(torch.isfinite(f).all() for f in feats)
