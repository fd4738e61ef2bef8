"""PrunedDenseNet, the compact export of a BanditDenseNet: equal to the fixed bandit model in
eval, only the kept channels left, upstream's state-dict names, clear channel_cfg errors, and
export_pruned's checkpoint loading strictly into the fine-tune config's model."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import load_checkpoint, save_checkpoint
from mmpretrain.models.backbones import DenseNet

from mmmod.analysis.complexity import model_from_config
from mmmod.analysis.pruning import export_pruned, prune_model
from mmmod.models.backbones import BanditDenseNet, PrunedDenseNet

ARCH = dict(growth_rate=4, depths=[2, 3, 2], init_channels=8)
TINY = dict(arch=ARCH, bn_size=2)


def trained_bandit(randomize_norms, steps=3, seed=0, **kwargs):
    """A BanditDenseNet after ``steps`` real bandit steps, its norms then randomised so that a
    wrong channel shows in the outputs."""
    torch.manual_seed(seed)
    model = BanditDenseNet(ratio=0.4, out_indices=(0, 1, 2), **TINY, **kwargs)
    for _ in range(steps):
        model.train()
        model.begin_bandit_step()
        loss = sum(out.square().mean() for out in model(torch.randn(2, 3, 32, 32)))
        loss.backward()
        model.end_bandit_step()
        model.zero_grad()
    randomize_norms(model, torch.Generator().manual_seed(seed))
    return model.eval()


@pytest.mark.parametrize('execution', ['thin', 'masked'])
def test_compact_equals_the_fixed_bandit(randomize_norms, execution):
    model = trained_bandit(randomize_norms, execution=execution)
    compact, channel_cfg = prune_model(model, dict(type='BanditDenseNet', ratio=0.4,
                                                   out_indices=(0, 1, 2), **TINY))
    assert isinstance(compact, PrunedDenseNet) and not compact.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = model(x), compact(x)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * float(e.abs().max()))

    # only the kept channels are left: each conv keeps its arm's filters, each reader's norm
    # and conv the channels its sources kept
    masks = {(a.site, a.position): m for a, m in zip(model.arms, model.fixed_masks())}
    assert compact.stem[0].out_channels == compact.stem[1].num_features == \
        int(masks[('stem', 'stem')].sum()) == len(channel_cfg['stem'])
    for site, block in model.bandit_blocks():
        slim = compact.get_submodule(site)
        for step in block.channel_structure.branch:
            conv = step.conv_of(slim)
            assert conv.out_channels == int(masks[(site, step.writes)].sum())
            assert conv.in_channels == step.norm_of(slim).num_features
        reads = model._steps[site].masks['input']
        assert slim.channel_structure.branch[0].conv_of(slim).in_channels == int(reads.sum())
    final = model._steps['transitions.2'].masks['input']
    assert compact.transitions[-1][0].num_features == int(final.sum())
    n_model = sum(p.numel() for n, p in model.named_parameters())
    assert sum(p.numel() for p in compact.parameters()) < 0.5 * n_model


def test_state_dict_keys_are_densenets(randomize_norms):
    model = trained_bandit(randomize_norms)
    compact, _ = prune_model(model, dict(type='BanditDenseNet', **TINY))
    upstream = DenseNet(**TINY).state_dict()
    assert list(compact.state_dict()) == list(upstream)
    assert all(compact.state_dict()[k].dim() == v.dim() for k, v in upstream.items())
    assert not hasattr(compact, 'bandit')


def _cfg(randomize_norms):
    model = trained_bandit(randomize_norms, steps=1)
    return model.pruned_channel_cfg(model.fixed_masks())


@pytest.mark.parametrize('edit, error, match', [
    (lambda c: c['blocks'].pop('stages.1.block.2'), ValueError,
     r"must list every block of a DenseNet with depths \[2, 3, 2\]; missing "
     r"\['stages.1.block.2'\]"),
    (lambda c: c['blocks']['transitions.0'].update(conv1=[0]), ValueError,
     r"'transitions.0' \(DenseTransition\) needs exactly the positions \['conv'\]; "
     r"missing \[\], unknown \['conv1'\]"),
    (lambda c: c['blocks']['stages.0.block.0'].update(conv2=[0, 9]), ValueError,
     r"position 'conv2': indices must be strictly increasing in \[0, 4\)"),
    (lambda c: c['blocks']['stages.0.block.1'].update(conv1=[]), ValueError, 'keeps no channel'),
    (lambda c: c.update(stem=[3, 1]), ValueError, "'stem' position 'stem': indices must be"),
    (lambda c: c['blocks']['stages.0.block.0'].update(conv1='all'), TypeError,
     'expected a list of channel indices'),
    (lambda c: c['arch'].update(growth_rate=8), ValueError,
     "exported from a DenseNet with arch .*'growth_rate': 8"),
    (lambda c: c.pop('blocks'), TypeError, 'with a "blocks" dict'),
])
def test_bad_channel_cfg_is_a_clear_error(randomize_norms, edit, error, match):
    cfg = copy.deepcopy(_cfg(randomize_norms))
    edit(cfg)
    with pytest.raises(error, match=match):
        PrunedDenseNet(**TINY, channel_cfg=cfg)


def test_missing_channel_cfg_and_memory_efficient_are_refused(randomize_norms, tmp_path):
    with pytest.raises(TypeError, match='needs channel_cfg'):
        PrunedDenseNet(**TINY)
    with pytest.raises(FileNotFoundError, match='tools/export_pruned.py'):
        PrunedDenseNet(**TINY, channel_cfg=str(tmp_path / 'none.json'))
    with pytest.raises(ValueError, match='PrunedDenseNet does not support memory_efficient'):
        PrunedDenseNet(**TINY, channel_cfg=_cfg(randomize_norms), memory_efficient=True)


def test_export_pruned_loads_strictly_into_the_fine_tune_config(randomize_norms, tmp_path):
    """export_pruned on a classifier config + checkpoint of a bandit run: the checkpoint loads
    strictly into the PrunedDenseNet a fine-tune config builds (the baseline's head, full
    width) and predicts as the bandit model in eval; "before" is the plain DenseNet."""
    backbone = dict(type='BanditDenseNet', ratio=0.4, **TINY)
    head = dict(type='LinearClsHead', num_classes=5, in_channels=18)
    text = (f"default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier', "
            f"backbone={backbone!r}, neck=dict(type='GlobalAveragePooling'), head={head!r})\n")
    (tmp_path / 'dce_dn.py').write_text(text)
    cfg = Config.fromfile(str(tmp_path / 'dce_dn.py'))
    model = model_from_config(cfg)
    model.backbone.load_state_dict(trained_bandit(randomize_norms).state_dict(), strict=False)
    save_checkpoint(dict(state_dict=model.state_dict(), meta=dict(epoch=2)),
                    str(tmp_path / 'dce.pth'))

    result = export_pruned(cfg, str(tmp_path / 'dce.pth'), str(tmp_path / 'out'),
                           shape=(32, 32))
    baseline = sum(p.numel() for p in DenseNet(**TINY).parameters()) + 18 * 5 + 5
    assert result['params']['before'] == baseline
    assert result['params']['after'] < 0.6 * baseline
    assert result['macs']['after'] < 0.7 * result['macs']['before']
    saved = torch.load(result['checkpoint'], map_location='cpu')
    assert saved['meta']['pruned']['backbone']['type'] == 'PrunedDenseNet'
    assert 'ratio' not in saved['meta']['pruned']['backbone']

    ft_cfg = Config(dict(cfg.to_dict(), model=dict(cfg.model.to_dict(), backbone=dict(
        type='PrunedDenseNet', channel_cfg=result['channels'], **TINY))))
    compact = model_from_config(ft_cfg)
    load_checkpoint(compact, result['checkpoint'], map_location='cpu', strict=True)
    model.eval(), compact.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = model(x, mode='tensor'), compact(x, mode='tensor')
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
