"""PrunedVGG: the compact export of a BanditVGG (Alg. 1 steps 12-14) computes what the bandit
model computes in eval, holds only the kept channels, loads strictly from export_pruned's
checkpoint, and refuses a wrong channel_cfg with a clear error."""
import copy

import pytest
import torch
from mmcv.cnn import ConvModule
from mmengine.config import Config
from mmengine.runner import load_checkpoint, save_checkpoint
from mmpretrain.models.backbones import VGG

from mmmod.analysis.complexity import model_from_config
from mmmod.analysis.pruning import bandit_channel_cfg, export_pruned, prune_model
from mmmod.models.backbones import BanditVGG, PrunedVGG
from mmmod.models.backbones.pruned_vgg import PrunedVGGLayer

BN = dict(type='BN')
# (BanditVGG arguments, input size): VGG's own widths, few stages keep it fast
CASES = {
    # 3 of VGG-13's stages, all features returned
    'vgg13-3': (dict(depth=13, num_stages=3, dilations=(1, 1, 1), out_indices=(0, 1, 2),
                     norm_cfg=BN, conv_cfg=dict(type='BiasFreeConv2d')), 16),
    # upstream's biased convs, no last pool
    'vgg11-bias': (dict(depth=11, num_stages=3, dilations=(1, 1, 1), out_indices=(2, ),
                        norm_cfg=BN, with_last_pool=False), 16),
}


def trained_bandit(randomize_norms, args, size, steps=3, seed=0):
    """A BanditVGG after ``steps`` real bandit steps (thin), its norms then randomised so that
    wrong channels show in the outputs."""
    torch.manual_seed(seed)
    model = BanditVGG(ratio=0.4, **args)
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
    compact, channel_cfg = prune_model(model, dict(type='BanditVGG', ratio=0.4, **args))
    assert isinstance(compact, PrunedVGG) and not compact.training
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = model(x), compact(x)
    assert len(expected) == len(got) == len(args['out_indices'])
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        assert torch.allclose(e, g, rtol=1e-4, atol=1e-5 * e.abs().max()), case

    # only the kept channels are left: each layer's conv / norm hold its mask's filters, read
    # the previous layer's
    masks = model.fixed_masks()
    previous = 3
    for (name, layer), mask in zip(compact.chain_layers(), masks):
        assert isinstance(layer, PrunedVGGLayer)
        assert layer.conv.weight.shape[:2] == (int(mask.sum()), previous), name
        assert layer.norm.num_features == int(mask.sum())
        assert channel_cfg['blocks'][name]['output'] == mask.nonzero().flatten().tolist()
        previous = int(mask.sum())
    n_model = sum(p.numel() for n, p in model.named_parameters() if 'bandit' not in n)
    assert sum(p.numel() for p in compact.parameters()) < 0.3 * n_model
    # upstream's state-dict names
    full = {k for k in VGG(**{k: v for k, v in args.items()}).state_dict()}
    assert set(compact.state_dict()) == full


def test_walk_equals_the_slim_conv_module():
    """A pruned layer's KeptChannels walk (slim in, slim out) is upstream's ConvModule forward
    on its slim modules."""
    layer = PrunedVGGLayer(8, 16, 3, padding=1, norm_cfg=BN,
                           kept=dict(input=[1, 4, 6], output=[0, 3, 9, 15])).eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ConvModule.forward(layer, x))
    assert 'input=3/8, output=4/16' in repr(layer)


def test_random_selection_keeps_as_many_channels(randomize_norms):
    args, size = CASES['vgg13-3']
    model = trained_bandit(randomize_norms, args, size)
    by_mean, by_random = bandit_channel_cfg(model), bandit_channel_cfg(model, by='random')
    assert by_random['blocks'] != by_mean['blocks']
    count = lambda cfg: sum(len(b['output']) for b in cfg['blocks'].values())  # noqa: E731
    assert count(by_mean) == count(by_random) == model.bandit.num_active
    PrunedVGG(channel_cfg=by_random, **args)  # a valid chain too


def _cfg(**changes):
    args, _ = CASES['vgg13-3']
    model = BanditVGG(ratio=0.5, **args)
    cfg = copy.deepcopy(model.pruned_channel_cfg(model.fixed_masks('random')))
    for layer, kept in changes.items():
        cfg['blocks'][layer].update(kept)
    return cfg


@pytest.mark.parametrize('channel_cfg, error, match', [
    (dict(depth=19, blocks={}), ValueError, 'exported from a depth-19 network'),
    (dict(layers={}), TypeError, 'with a "blocks" dict'),
    ('missing_channels.json', FileNotFoundError, 'not found: point it at'),
    ('rename', ValueError, r"must list every block of a depth-13 VGG with 3 stages \(6 conv "
                           r"layers\); missing \['features.0'\], unknown \['conv1'\]"),
    (dict(output=[3, 1]), ValueError, r"'features.1' position 'output': indices must be "
                                      r'strictly increasing in \[0, 64\)'),
    (dict(output=[64]), ValueError, r'strictly increasing in \[0, 64\)'),
    (dict(output=[]), ValueError, "position 'output' keeps no channel"),
    (dict(gate=[0]), ValueError, r"needs exactly the positions \['input', 'output'\]"),
    ('chain', ValueError, r"'features.4' position 'input' must be features.3's kept output"),
    ('image', ValueError, r"'features.0' position 'input' must be the whole image"),
])
def test_bad_channel_cfg(channel_cfg, error, match):
    args, _ = CASES['vgg13-3']
    if isinstance(channel_cfg, dict) and 'depth' not in channel_cfg and \
            'layers' not in channel_cfg:
        channel_cfg = _cfg(**{'features.1': channel_cfg})
    elif channel_cfg == 'rename':
        channel_cfg = _cfg()
        channel_cfg['blocks']['conv1'] = channel_cfg['blocks'].pop('features.0')
    elif channel_cfg == 'chain':
        channel_cfg = _cfg()
        channel_cfg['blocks']['features.4']['input'] = list(range(128))
    elif channel_cfg == 'image':
        channel_cfg = _cfg(**{'features.0': dict(input=[0, 2])})
    with pytest.raises(error, match=match):
        PrunedVGG(channel_cfg=channel_cfg, **args)


def test_state_dict_of_another_network_is_refused():
    args, _ = CASES['vgg13-3']
    compact = PrunedVGG(channel_cfg=_cfg(), **args)
    other = VGG(depth=13, num_stages=2, dilations=(1, 1), out_indices=(1, ),
                norm_cfg=BN).state_dict()
    with pytest.raises(KeyError, match="no 'features.6.conv.weight'"):
        compact.state_dict_from_full(other)


def _classifier_config(tmp_path, backbone, num_classes=5, in_channels=256):
    head = dict(type='LinearClsHead', num_classes=num_classes, in_channels=in_channels)
    text = (f"default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier', "
            f"backbone={backbone!r}, neck=dict(type='GlobalAveragePooling'), head={head!r})\n")
    path = tmp_path / 'dce_vgg.py'
    path.write_text(text)
    return Config.fromfile(str(path))


def test_export_pruned_of_a_bandit_vgg_checkpoint(randomize_norms, tmp_path):
    """export_pruned on a BanditVGG config + checkpoint: the written checkpoint loads strictly
    into the fine-tune model (the baseline's 512-wide head unchanged) and predicts as the
    bandit model in eval; "before" is the full-width baseline VGG."""
    args = dict(CASES['vgg13-3'][0], out_indices=(2, ))
    size = CASES['vgg13-3'][1]
    cfg = _classifier_config(tmp_path, dict(type='BanditVGG', ratio=0.4, **args))
    model = model_from_config(cfg)
    model.backbone.load_state_dict(
        trained_bandit(randomize_norms, args, size).state_dict(), strict=False)
    save_checkpoint(dict(state_dict=model.state_dict(), meta=dict(epoch=2)),
                    str(tmp_path / 'dce.pth'))

    result = export_pruned(cfg, str(tmp_path / 'dce.pth'), str(tmp_path / 'out'),
                           shape=(size, size))
    baseline = VGG(**args)
    head_params = 256 * 5 + 5
    assert result['params']['before'] == sum(
        p.numel() for p in baseline.parameters()) + head_params
    assert result['params']['after'] < 0.3 * result['params']['before']
    assert result['macs']['after'] < 0.4 * result['macs']['before']
    saved = torch.load(result['checkpoint'], map_location='cpu')
    assert saved['meta']['pruned']['backbone']['type'] == 'PrunedVGG'
    assert 'ratio' not in saved['meta']['pruned']['backbone']

    ft_cfg = Config(dict(cfg.to_dict(), model=dict(cfg.model.to_dict(), backbone=dict(
        type='PrunedVGG', channel_cfg=result['channels'], **args))))
    compact = model_from_config(ft_cfg)
    load_checkpoint(compact, result['checkpoint'], map_location='cpu', strict=True)
    model.eval(), compact.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = model(x, mode='tensor'), compact(x, mode='tensor')
    assert torch.allclose(expected, got, rtol=1e-4, atol=1e-5 * expected.abs().max())
