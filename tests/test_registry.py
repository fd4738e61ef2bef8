"""Wiring: every mmmod name builds from mmpretrain's, mmseg's and mmdet's registries."""
import subprocess
import sys
import textwrap

import pytest
from mmengine.registry import DefaultScope
from mmengine.registry import MODELS as ROOT_MODELS

import mmmod
from mmmod.analysis.pruning import bandit_channel_cfg, gated_channel_cfg
from mmmod.models import backbones

# Bounds a hung subprocess; no normal run comes near it, even on a loaded machine.
HANG_TIMEOUT_S = 30 * 60
SCOPES = ['mmpretrain', 'mmseg', 'mmdet']
BACKBONES = {
    'ResNetMoD': dict(depth=18),
    'ResNetV1cMoD': dict(depth=18),
    'MobileNetV2MoD': dict(arch='MoD'),
    'ResNetPiX': dict(depth=50),
    'ResNetV1cPiX': dict(depth=50),
    'GatedResNet': dict(depth=18),
    'GatedResNetV1c': dict(depth=18),
    'GatedMobileNetV2': dict(),
    'BanditResNet': dict(depth=18),
}
# the dynamic-channel-execution hosts, small: VGG-11 with BN (its conv layers need a norm), a
# 2-stage DenseNet of growth 4
VGG11 = dict(depth=11, norm_cfg=dict(type='BN'), conv_cfg=dict(type='BiasFreeConv2d'))
DENSENET = dict(arch=dict(growth_rate=4, depths=[2, 2], init_channels=8))
BACKBONES.update(BanditVGG=VGG11, BanditDenseNet=DENSENET)
# Pruned backbones need a channel config: the export of a freshly built data-independent gated
# network (its gates start ~98% on, so every channel is kept).
_CHANNELS_R18 = gated_channel_cfg(backbones.GatedResNet(depth=18, gate_type='independent'))
BACKBONES.update(
    PrunedResNet=dict(depth=18, channel_cfg=_CHANNELS_R18),
    PrunedResNetV1c=dict(depth=18, channel_cfg=_CHANNELS_R18),
    PrunedMobileNetV2=dict(channel_cfg=gated_channel_cfg(
        backbones.GatedMobileNetV2(gate_type='independent'))))
# ... and the compact export of a bandit host: the channels of a random fixed topology
BACKBONES.update(
    PrunedVGG=dict(VGG11, channel_cfg=bandit_channel_cfg(backbones.BanditVGG(**VGG11),
                                                         by='random')),
    PrunedDenseNet=dict(DENSENET, channel_cfg=bandit_channel_cfg(
        backbones.BanditDenseNet(**DENSENET), by='random')))


def scope_registry(scope):
    module = __import__(f'{scope}.registry', fromlist=['MODELS'])
    return module.MODELS


def test_every_backbone_is_registered_in_the_root():
    assert set(backbones.__all__) == set(BACKBONES)
    for name in backbones.__all__:
        assert ROOT_MODELS.get(name) is getattr(backbones, name)


@pytest.mark.parametrize('scope', SCOPES)
@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_build_from_downstream_registry(scope, name):
    registry = scope_registry(scope)
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(dict(type=name, **BACKBONES[name]))
    assert type(model) is getattr(mmmod.models, name)


@pytest.mark.parametrize('base,check', [
    ('mmpretrain::resnet/resnet50_8xb32_in1k.py', 'model.backbone'),
    ('mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py', 'model.backbone'),
    ('mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py', 'model.backbone'),
])
def test_custom_imports_in_a_users_config(tmp_path, base, check):
    """A fresh interpreter that never imported mmmod builds it through custom_imports."""
    cfg = tmp_path / 'my_config.py'
    cfg.write_text(textwrap.dedent(f"""
        _base_ = '{base}'
        custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
        model = dict(backbone=dict(_delete_=True, type='ResNetMoD', depth=50,
                                   out_indices=(0, 1, 2, 3) if 'resnet50_' not in '{base}'
                                   else (3, )))
    """))
    script = textwrap.dedent(f"""
        import sys
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        cfg = Config.fromfile({str(cfg)!r})
        assert 'mmmod' in sys.modules, 'custom_imports did not import mmmod'
        scope = cfg.default_scope
        init_default_scope(scope)
        registry = __import__(scope + '.registry', fromlist=['MODELS']).MODELS
        backbone = registry.build(cfg.{check})
        print(type(backbone).__name__)
    """)
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                         timeout=HANG_TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith('ResNetMoD')
