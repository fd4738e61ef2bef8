"""Compact export of dynamic channel execution (mmmod/analysis/pruning.py, Alg. 1 steps 12-14):
a BanditResNet's topology fixed by mean saliency becomes a PrunedResNet (stem included) that
computes what the bandit model computes in eval, holds only the active channels, and is
refused with a clear error where there is nothing learned to fix."""
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import load_checkpoint, save_checkpoint
from mmpretrain.models.backbones import ResNet

from mmmod.analysis.complexity import model_from_config
from mmmod.analysis.pruning import bandit_channel_cfg, export_pruned, prune_model
from mmmod.models.backbones import BanditResNet, PrunedResNet
from mmmod.models.backbones.pruned_resnet import ScatterChannels

# (BanditResNet arguments, input size); narrow widths keep it fast, the structure is ResNet's
CASES = {
    # stem arm (layer1.0 projects its input), conv1 / conv2 arms
    'r50': (dict(depth=50, stem_channels=16, base_channels=8), 32),
    # conv3 and shortcut arms too, added into the stream at their channels
    'r50-tied': (dict(depth=50, stem_channels=16, base_channels=8, arm_tied=True), 32),
    # no stem arm: layer1.0 adds the stem's output to the stream
    'r18': (dict(depth=18, stem_channels=16, base_channels=16), 32),
    # a tied stem arm feeding an identity shortcut: scattered back after the max pool
    'r18-tied': (dict(depth=18, stem_channels=16, base_channels=16, arm_tied=True), 32),
    'r50-deep-avgdown': (dict(depth=50, stem_channels=16, base_channels=8, deep_stem=True,
                              avg_down=True, style='caffe'), 32),
}


def trained_bandit(randomize_norms, args, size, steps=3, seed=0):
    """A BanditResNet after ``steps`` real bandit steps (selection, thin forward and backward,
    observation), its norms then randomised so that wrong channels show in the outputs."""
    torch.manual_seed(seed)
    model = BanditResNet(ratio=0.4, out_indices=(0, 1, 2, 3), **args)
    for _ in range(steps):
        model.train()
        model.begin_bandit_step()
        loss = sum(out.square().mean() for out in model(torch.randn(2, 3, size, size)))
        loss.backward()
        model.end_bandit_step()
        model.zero_grad()
    randomize_norms(model, torch.Generator().manual_seed(seed))
    return model.eval()


@pytest.mark.parametrize('case', sorted(CASES))
def test_compact_equals_the_fixed_bandit(randomize_norms, case):
    args, size = CASES[case]
    model = trained_bandit(randomize_norms, args, size)
    compact, channel_cfg = prune_model(model, dict(type='BanditResNet', ratio=0.4,
                                                   out_indices=(0, 1, 2, 3), **args))
    assert isinstance(compact, PrunedResNet) and not compact.training
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = model(x), compact(x)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        assert torch.allclose(e, g, rtol=1e-4, atol=1e-5 * e.abs().max()), case

    # only the active channels are left: each arm's producers keep exactly its mask's filters
    masks = model.fixed_masks()
    kept = {(arm.site, arm.position): int(mask.sum()) for arm, mask in zip(model.arms, masks)}
    for (site, pos), count in kept.items():
        if site == 'stem':
            assert compact.stem_parts()[1].out_channels == count
            assert channel_cfg['stem'] == masks[0].nonzero().flatten().tolist()
        else:
            assert len(compact.get_submodule(site).kept_channels[pos]) == count
    n_model = sum(p.numel() for n, p in model.named_parameters() if 'bandit' not in n)
    assert sum(p.numel() for p in compact.parameters()) < 0.8 * n_model
    assert any(isinstance(m, ScatterChannels) for m in compact.modules()) == (case == 'r18-tied')


def test_random_selection_keeps_as_many_channels_elsewhere(randomize_norms):
    args, size = CASES['r50']
    model = trained_bandit(randomize_norms, args, size)
    by_mean, by_random = bandit_channel_cfg(model), bandit_channel_cfg(model, by='random')
    assert (by_mean['selection'], by_random['selection']) == ('mean', 'random')
    assert by_mean['bandit_step'] == 3 and by_mean['ratio'] == 0.4
    expected = model.bandit.select_fixed('random')
    assert by_random['stem'] == expected[0].nonzero().flatten().tolist()
    assert by_random['blocks'] != by_mean['blocks']
    count = lambda cfg: len(cfg['stem']) + sum(  # noqa: E731
        len(b[p]) for b in cfg['blocks'].values() for p in ('conv1', 'conv2'))
    assert count(by_mean) == count(by_random) == model.bandit.num_active


def test_untrained_bandit_and_bad_selection_are_clear_errors():
    model = BanditResNet(depth=18, ratio=0.5)
    with pytest.raises(ValueError, match="observed no training step.*by='random'"):
        bandit_channel_cfg(model)
    with pytest.raises(ValueError, match=r"one of \('mean', 'random'\), got 'best'"):
        bandit_channel_cfg(model, by='best')
    assert bandit_channel_cfg(model, by='random')['bandit_step'] == 0


def _classifier_config(tmp_path, backbone):
    head = dict(type='LinearClsHead', num_classes=5, in_channels=256)
    text = (f"default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier', "
            f"backbone={backbone!r}, neck=dict(type='GlobalAveragePooling'), head={head!r})\n")
    path = tmp_path / 'dce_r50.py'
    path.write_text(text)
    return Config.fromfile(str(path))


def test_export_pruned_of_a_bandit_checkpoint(randomize_norms, tmp_path):
    """export_pruned on a config + checkpoint of a bandit run: the written checkpoint loads
    strictly into the PrunedResNet a fine-tune config builds and predicts as the bandit model
    in eval; "before" is the full-width baseline ResNet (the paper's % of baseline)."""
    args, size = CASES['r50']
    bandit_cfg = dict(type='BanditResNet', ratio=0.4, out_indices=(3, ), **args)
    cfg = _classifier_config(tmp_path, bandit_cfg)
    model = model_from_config(cfg)
    model.backbone.load_state_dict(
        trained_bandit(randomize_norms, args, size).state_dict(), strict=False)
    save_checkpoint(dict(state_dict=model.state_dict(), meta=dict(epoch=2)),
                    str(tmp_path / 'dce.pth'))

    result = export_pruned(cfg, str(tmp_path / 'dce.pth'), str(tmp_path / 'out'),
                           shape=(size, size))
    assert result['checkpoint'].endswith('out/dce_r50_pruned.pth')
    baseline = ResNet(depth=50, stem_channels=16, base_channels=8, out_indices=(3, ))
    head_params = 256 * 5 + 5
    assert result['params']['before'] == sum(
        p.numel() for p in baseline.parameters()) + head_params
    assert result['params']['after'] < 0.5 * result['params']['before']
    assert result['macs']['after'] < 0.6 * result['macs']['before']
    saved = torch.load(result['checkpoint'], map_location='cpu')
    assert saved['meta']['epoch'] == 2 and saved['meta']['pruned']['selection'] == 'mean'
    assert saved['meta']['pruned']['backbone']['type'] == 'PrunedResNet'
    assert 'ratio' not in saved['meta']['pruned']['backbone']

    ft_cfg = Config(dict(cfg.to_dict(), model=dict(cfg.model.to_dict(), backbone=dict(
        type='PrunedResNet', out_indices=(3, ), channel_cfg=result['channels'],
        **{k: v for k, v in args.items()}))))
    compact = model_from_config(ft_cfg)
    load_checkpoint(compact, result['checkpoint'], map_location='cpu', strict=True)
    model.eval(), compact.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = model(x, mode='tensor'), compact(x, mode='tensor')
    assert torch.allclose(expected, got, rtol=1e-4, atol=1e-5 * expected.abs().max())

    random = export_pruned(cfg, str(tmp_path / 'dce.pth'), str(tmp_path / 'out'),
                           shape=(size, size), by='random')
    assert random['checkpoint'].endswith('out/dce_r50_random_pruned.pth')


def test_export_of_a_checkpoint_without_bandit_state_is_a_clear_error(tmp_path):
    args, _ = CASES['r18']
    cfg = _classifier_config(tmp_path, dict(type='BanditResNet', ratio=0.5, **args))
    plain = model_from_config(_classifier_config(tmp_path, dict(type='ResNet', **args)))
    save_checkpoint(dict(state_dict=plain.state_dict()), str(tmp_path / 'plain.pth'))
    with pytest.raises(ValueError, match=r'holds no channel-bandit state \(backbone\.bandit\.'
                       r'counts, backbone\.bandit\.means, backbone\.bandit\.step missing\)'):
        export_pruned(cfg, str(tmp_path / 'plain.pth'), str(tmp_path / 'out'), shape=(32, 32))
