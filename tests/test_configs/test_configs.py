"""Every config in configs/ loads and builds its full model with its own library's registry
(under the config's ``default_scope``); one config per task also runs a tiny forward through
backbone and neck. The model zoo (configs/model-index.yml and the metafiles) lists exactly the
configs that exist. ``init_weights`` is never called here, so no checkpoint is needed."""
import glob
import os.path as osp

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(REPO, 'configs')
# ``_base_`` folders hold config parts (a model, a dataset, a schedule), not runnable configs.
ALL_CONFIGS = sorted(
    osp.relpath(p, REPO) for p in glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True)
    if '_base_' not in p.split(osp.sep))
# Paths kept for users and docs; each only inherits the config it names.
ALIASES = {
    'configs/fcn_r86mod_cityscapes.py':
    'configs/cityscapes/fcn_r86-mod-d8_4xb2-80k_cityscapes-512x1024.py',
}
# One config per task gets a forward at a tiny input: (config, input (N, C, H, W)).
FORWARD = {
    'configs/imagenet/resnet50-mod_8xb32_in1k.py': (1, 3, 32, 32),
    'configs/cityscapes/fcn_r50-mod-d8_4xb2-80k_cityscapes-512x1024.py': (1, 3, 32, 32),
    'configs/voc/faster-rcnn_r50-mod_fpn_1x_voc0712.py': (1, 3, 64, 64),
    'configs/pix/resnet50-pix_8xb32_in1k.py': (1, 3, 32, 32),
    'configs/pix/fcn_r50-pix-d8_4xb2-80k_cityscapes-512x1024.py': (1, 3, 32, 32),
    'configs/pix/faster-rcnn_r50-pix_fpn_1x_voc0712.py': (1, 3, 64, 64),
    'configs/gating/resnet50-gate-ind-t05-pruned_8xb32_in1k.py': (1, 3, 32, 32),
    'configs/gating/fcn_r50-gate-ind-t05-pruned-d8_4xb2-80k_cityscapes-512x1024.py': (1, 3, 32, 32),
    'configs/gating/faster-rcnn_r50-gate-ind-t05-pruned_fpn_1x_voc0712.py': (1, 3, 64, 64),
}
SCOPES = ('mmpretrain', 'mmseg', 'mmdet')


def _models_registry(scope):
    if scope == 'mmpretrain':
        from mmpretrain.registry import MODELS
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
    elif scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        raise AssertionError(f'unexpected default_scope {scope!r}')
    return MODELS


def _exported_channel_cfg(backbone):
    """Pruned backbones read the channel JSON tools/export_pruned.py writes from a trained
    model. Here it comes from the same architecture built fresh: a data-independent gated
    ResNet whose gate logits are random (seed 0), so some groups of every position are off, or,
    for the export of a dynamic-channel-execution run (the -ft configs), the channel bandit of
    that architecture with a random fixed topology."""
    from mmmod.analysis.pruning import bandit_channel_cfg, gated_channel_cfg
    from mmmod.models.backbones import GatedResNet
    from mmmod.registry import MODELS
    assert str(backbone.channel_cfg).endswith('_channels.json'), backbone.channel_cfg
    bandits = {cls.pruned_type: cls for cls in MODELS.module_dict.values()
               if getattr(cls, 'pruned_type', '')}
    arch = {k: v for k, v in backbone.items() if k not in ('type', 'channel_cfg')}
    torch.manual_seed(0)
    if '-dce-' in osp.basename(backbone.channel_cfg):  # configs/dce/ names its runs so
        return bandit_channel_cfg(bandits[backbone.type](**arch), by='random')
    gated = GatedResNet(depth=backbone.depth, gate_type='independent')
    generator = torch.Generator().manual_seed(0)
    for name, param in gated.named_parameters():
        if name.endswith('gate.logits'):
            param.data.normal_(generator=generator)
    return gated_channel_cfg(gated)


def _build(config):
    cfg = Config.fromfile(osp.join(REPO, config))
    if str(cfg.model.get('backbone', {}).get('type')).startswith('Pruned'):
        cfg.model.backbone.channel_cfg = _exported_channel_cfg(cfg.model.backbone)
    init_default_scope(cfg.default_scope)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return cfg, _models_registry(cfg.default_scope).build(cfg.model)


def test_configs_found():
    assert len(ALL_CONFIGS) >= 30, ALL_CONFIGS
    assert set(FORWARD) <= set(ALL_CONFIGS)


@pytest.mark.parametrize('config', ALL_CONFIGS)
def test_config_loads_and_builds(config):
    cfg, model = _build(config)
    assert cfg.default_scope in SCOPES
    assert cfg.custom_imports == dict(imports=['mmmod'], allow_failed_imports=False)
    backbone = cfg.model.backbone
    assert type(model.backbone).__name__ == backbone.type
    if 'MoD' in backbone.type:
        # downstream MoD backbones start from ImageNet weights of the same architecture
        if cfg.default_scope != 'mmpretrain':
            assert backbone.init_cfg.type == 'Pretrained'
            assert backbone.init_cfg.prefix == 'backbone.'
            assert cfg.model.get('pretrained') is None  # mmseg would overwrite init_cfg
            imagenet = osp.basename(osp.dirname(backbone.init_cfg.checkpoint))
            assert osp.isfile(osp.join(CONFIGS, 'imagenet', imagenet + '.py')), imagenet
    if config in FORWARD:
        model.eval()
        with torch.no_grad():
            feats = model.extract_feat(torch.rand(FORWARD[config]))
        assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize('alias', ALIASES)
def test_alias_inherits_its_target(alias):
    alias_cfg = Config.fromfile(osp.join(REPO, alias))
    target = Config.fromfile(osp.join(REPO, ALIASES[alias]))
    assert alias_cfg.model.to_dict() == target.model.to_dict()
    assert alias_cfg.train_cfg.to_dict() == target.train_cfg.to_dict()


def test_missing_pretrained_checkpoint_is_a_clear_error(tmp_path):
    cfg = Config.fromfile(osp.join(REPO, 'configs/voc/faster-rcnn_r50-mod_fpn_1x_voc0712.py'))
    from mmmod.registry import MODELS
    backbone_cfg = cfg.model.backbone.to_dict()
    backbone_cfg.pop('_delete_', None)
    missing = str(tmp_path / 'work_dirs' / 'resnet50-mod_8xb32_in1k' / 'epoch_100.pth')
    backbone_cfg['init_cfg']['checkpoint'] = missing
    backbone = MODELS.build(backbone_cfg)
    with pytest.raises(FileNotFoundError, match=f'{missing} can not be found'):
        backbone.init_weights()


def _model_zoo():
    with open(osp.join(CONFIGS, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    models = []
    for entry in index['Import']:
        with open(osp.join(CONFIGS, entry)) as f:
            metafile = yaml.safe_load(f)
        collections = {c['Name'] for c in metafile['Collections']}
        for model in metafile['Models']:
            assert model['In Collection'] in collections, model['Name']
            models.append(model)
    return models


def test_model_zoo_lists_exactly_the_configs():
    models = _model_zoo()
    names = [m['Name'] for m in models]
    assert len(names) == len(set(names)), 'duplicate model names'
    listed = [m['Config'] for m in models]
    assert len(listed) == len(set(listed)), 'a config is listed twice'
    missing_files = [c for c in listed if not osp.isfile(osp.join(REPO, c))]
    assert not missing_files, f'listed but not in configs/: {missing_files}'
    unlisted = set(ALL_CONFIGS) - set(listed) - set(ALIASES)
    assert not unlisted, f'in configs/ but not in the model zoo: {sorted(unlisted)}'
    for model in models:
        assert {'Name', 'In Collection', 'Config', 'Metadata'} <= set(model), model['Name']
        for result in model.get('Results') or []:
            assert {'Task', 'Dataset', 'Metrics'} <= set(result), model['Name']
