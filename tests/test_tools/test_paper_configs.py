"""The paper's configs end to end, one MoD config per task, on the session's generated data.

Each MoD config goes through the same user overrides, tools and checks as its stock config in
test_stock_configs.py (its template, with ``_base_`` pointed at the MoD config): train 2
iterations, test, check the metric json. Then an ImageNet checkpoint written by
``tools/train.py`` initialises the backbones of the FCN and Faster R-CNN MoD configs through
their ``init_cfg=dict(type='Pretrained', prefix='backbone.')``.
"""
import importlib.util
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint

from mmmod.models.layers import MoDBlock

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _stock_tests():
    """test_stock_configs.py, whose user-config templates and checks are reused here."""
    path = osp.join(osp.dirname(osp.abspath(__file__)), 'test_stock_configs.py')
    spec = importlib.util.spec_from_file_location('mmmod_test_stock_configs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STOCK = _stock_tests()
# MoD config -> (its stock case, template edits (old, new) besides the _base_)
MOD_CASES = {
    'configs/imagenet/resnet50-mod_8xb32_in1k.py': ('mmpretrain-resnet50-in1k', ()),
    'configs/cityscapes/fcn_r50-mod-d8_4xb2-80k_cityscapes-512x1024.py':
    ('mmseg-fcn-r50-cityscapes',
     # no ImageNet run behind this test: random backbone (the init test below loads one)
     (('    pretrained=None,', '    pretrained=None,\n    backbone=dict(init_cfg=None),'), )),
    # the stock VOC template already sets model.backbone.init_cfg=None
    'configs/voc/faster-rcnn_r50-mod_fpn_1x_voc0712.py': ('mmdet-faster-rcnn-r50-voc0712', ()),
}


def mod_case(config):
    """The stock case of ``config``'s task with the template's ``_base_`` set to ``config``."""
    stock_id, edits = MOD_CASES[config]
    case = STOCK.CASES[stock_id]
    template, count = re.subn(r"^_base_ = '[^']*'$", f'_base_ = {osp.join(REPO, config)!r}',
                              case.template, count=1, flags=re.M)
    assert count == 1
    for old, new in edits:
        assert old in template, old
        template = template.replace(old, new, 1)
    return case._replace(template=template)


@pytest.mark.parametrize('config', MOD_CASES, ids=lambda c: osp.basename(c)[:-3])
def test_mod_config_trains_and_tests(config, request, tmp_path, tool_env, run_tool):
    STOCK.test_stock_config_trains_and_tests(mod_case(config), request, tmp_path, tool_env,
                                             run_tool)


@pytest.fixture(scope='module')
def imagenet_checkpoint(tmp_path_factory, imagenet_data_root, tool_env, run_tool):
    """``imagenet_checkpoint(imagenet_config)``: the checkpoint of a 2-iteration tools/train.py
    run of an ImageNet MoD config on the tiny ImageNet (one run per config per module)."""
    done = {}

    def train(config):
        if config not in done:
            work = tmp_path_factory.mktemp('imagenet-pretrain')
            case = STOCK.CASES['mmpretrain-resnet50-in1k']
            path = work / 'pretrain.py'
            path.write_text(re.sub(r"^_base_ = '[^']*'$", f'_base_ = {osp.join(REPO, config)!r}',
                                   case.template, count=1, flags=re.M).format(
                                       data_root=str(imagenet_data_root)))
            out = run_tool(['train.py', path, '--work-dir', work / 'train'],
                           tool_env(path, **STOCK.THREADS))
            assert out.returncode == 0, out.stdout[-4000:]
            done[config] = (work / 'train' / 'last_checkpoint').read_text().strip()
        return done[config]

    return train


# downstream config -> the ImageNet config of the same backbone architecture
PRETRAIN = {
    'configs/cityscapes/fcn_r50-mod-d8_4xb2-80k_cityscapes-512x1024.py':
    'configs/imagenet/resnetv1c50-mod_8xb32_in1k.py',
    'configs/voc/faster-rcnn_r50-mod_fpn_1x_voc0712.py': 'configs/imagenet/resnet50-mod_8xb32_in1k.py',
}


@pytest.mark.parametrize('config', PRETRAIN, ids=lambda c: osp.basename(c)[:-3])
def test_imagenet_checkpoint_initialises_downstream_backbone(config, imagenet_checkpoint):
    checkpoint = imagenet_checkpoint(PRETRAIN[config])
    cfg = Config.fromfile(osp.join(REPO, config))
    # the config's own checkpoint path names the ImageNet config it expects
    assert osp.basename(osp.dirname(cfg.model.backbone.init_cfg.checkpoint)) == \
        osp.basename(PRETRAIN[config])[:-3]
    cfg.model.backbone.init_cfg.checkpoint = checkpoint
    init_default_scope(cfg.default_scope)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        from mmengine.registry import MODELS
        model = MODELS.build(cfg.model)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.init_weights()

    trained = _load_checkpoint(str(checkpoint), map_location='cpu')['state_dict']
    backbone = model.backbone.state_dict()
    expected = {k[len('backbone.'):]: v for k, v in trained.items() if k.startswith('backbone.')}
    assert set(expected) == set(backbone)  # same architecture: every tensor has its source
    for key, value in expected.items():
        assert torch.equal(backbone[key], value), key
    # the loaded weights are not what the backbone was built with, incl. a MoD selector
    mod = next(n for n, m in model.backbone.named_modules() if isinstance(m, MoDBlock))
    selector = next(k for k in backbone if k.startswith(mod + '.') and 'selector' in k
                    and k.endswith('weight'))
    stem = 'stem.0.conv.weight' if 'stem.0.conv.weight' in backbone else 'conv1.weight'
    for key in (stem, selector):
        assert not torch.equal(before[key], backbone[key]), key


# What a user writes to try MoD in a config of their own: import mmmod, swap the backbone type.
USER_SWAP = '''
custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
model = dict(backbone=dict(type='ResNetMoD', depth=50))
'''


def test_users_stock_config_with_only_the_backbone_swapped(request, tmp_path, tool_env,
                                                          run_tool):
    """A stock mmpretrain recipe + custom_imports + ``type='ResNetMoD'`` trains and tests,
    and what it trained is a MoD network."""
    case = STOCK.CASES['mmpretrain-resnet50-in1k']
    STOCK.test_stock_config_trains_and_tests(case._replace(template=case.template + USER_SWAP),
                                             request, tmp_path, tool_env, run_tool)
    checkpoint = (tmp_path / 'train' / 'last_checkpoint').read_text().strip()
    state = _load_checkpoint(str(checkpoint), map_location='cpu')['state_dict']
    assert 'backbone.layer3.1.selector.fc1.weight' in state
    assert 'backbone.layer3.1.conv1.weight' not in state  # block 1 is a MoD block now
