"""Export of data-independent GatedResNets as PrunedResNets (mmmod/analysis/pruning.py,
mmmod/models/backbones/pruned_resnet.py): the pruned network computes what the thresholded
gated one does, holds only the kept filters, and bad channel configs are clear errors."""
import copy
import json

import pytest
import torch
import torch.nn as nn
from mmpretrain.models.backbones import ResNet

from mmmod.analysis.pruning import export_pruned, gated_channel_cfg, prune_model
from mmmod.models.backbones import (GatedMobileNetV2, GatedResNet, PrunedMobileNetV2,
                                    PrunedResNet)
from mmmod.models.layers.gumbel_gate import iter_gated_blocks


@pytest.fixture(scope='module')
def randomize(randomize_norms):
    """``randomize(model, seed)``: random BN affine + running statistics (tests/conftest.py)
    and random gate logits (about half the learned gates off), so that zeroed groups and
    shifted BN outputs show in the outputs."""
    def randomize(model: nn.Module, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        randomize_norms(model, g)
        with torch.no_grad():
            for _, block in iter_gated_blocks(model):
                if block.gate is not None and hasattr(block.gate, 'logits'):
                    block.gate.logits.copy_(torch.randn(block.gate.logits.shape, generator=g))
    return randomize


def set_position(block, pos: str, on: bool) -> None:
    """All learned gates of ``pos`` of an independent-gate block on or off."""
    start = 0
    for p in block.gate_positions:
        n = block.channel_gates[p].num_gates
        if p == pos:
            with torch.no_grad():
                block.gate.logits[start:start + n] = torch.tensor([0., 5.] if on else [5., 0.])
            return
        start += n
    raise KeyError(pos)


# (gated backbone config, forced positions: block -> {position: on}, input size)
CASES = {
    'r18': (dict(type='GatedResNet', depth=18),
            # whole groups off: input and the added output of a projection block
            {'layer2.0': dict(input=False, conv2=False, downsample=False),
             'layer3.0': dict(conv2=True, downsample=False)}, 32),
    'r50': (dict(type='GatedResNet', depth=50),
            {'layer1.0': dict(input=False, conv3=False, downsample=False),
             'layer2.0': dict(conv3=True),  # branch full width, shortcut partial
             'layer3.0': dict(downsample=True),  # branch partial, shortcut full width
             'layer3.1': dict(conv1=False, conv2=False, conv3=False)}, 32),
    'r50-v1c-dilated': (dict(type='GatedResNetV1c', depth=50, strides=(1, 2, 1, 1),
                             dilations=(1, 1, 2, 4), contract_dilation=True), {}, 32),
    'r18-caffe-avgdown': (dict(type='GatedResNet', depth=18, style='caffe', avg_down=True),
                          {'layer4.0': dict(downsample=False)}, 32),
}


@pytest.fixture(scope='module')
def build_gated(randomize):
    """``build_gated(cfg, forced, seed)``: a randomized independent-gate model, in eval mode,
    with the ``forced`` positions' gates all on / off."""
    def build_gated(cfg, forced, seed):
        from mmmod.registry import MODELS
        gated = MODELS.build(dict(cfg, gate_type='independent', out_indices=(0, 1, 2, 3)))
        randomize(gated, seed)
        blocks = dict(iter_gated_blocks(gated))
        for name, positions in forced.items():
            for pos, on in positions.items():
                set_position(blocks[name], pos, on)
        return gated.eval()
    return build_gated


# several seeds for the plain ResNet-18 / -50, one for the stem / stride / dilation variants
SEEDED = [(c, s) for c in ('r18', 'r50') for s in (0, 1, 2)] + \
    [('r50-v1c-dilated', 0), ('r18-caffe-avgdown', 0)]


@pytest.mark.parametrize('case, seed', SEEDED, ids=[f'{c}-seed{s}' for c, s in SEEDED])
def test_pruned_equals_thresholded_gated(build_gated, case, seed):
    cfg, forced, size = CASES[case]
    gated = build_gated(cfg, forced, seed)
    pruned, channels = prune_model(gated, dict(cfg, out_indices=(0, 1, 2, 3)))
    for name, positions in forced.items():
        for pos, on in positions.items():
            block = dict(iter_gated_blocks(gated))[name]
            kept = len(channels['blocks'][name][pos])
            gate = block.channel_gates[pos]
            assert kept == (gate.channels if on else gate.group_size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected, got = gated(x), pruned(x)
    assert len(expected) == len(got) == 4
    for e, o in zip(expected, got):
        assert e.shape == o.shape
        assert (e - o).abs().max() <= 1e-5 * e.abs().max(), (e - o).abs().max()
    # something was pruned in every stage, so the test compares different networks
    full = dict(gated.named_parameters())
    for stage in ('layer1', 'layer2', 'layer3', 'layer4'):
        key = f'{stage}.0.conv1.weight'
        assert dict(pruned.named_parameters())[key].numel() < full[key].numel(), key


def _block_macs(model, x):
    """Conv MACs inside the residual blocks (layerX.Y), counted from the real tensors."""
    total = []

    def hook(conv, inputs, output):
        total.append(output.numel() * conv.in_channels // conv.groups
                     * conv.kernel_size[0] * conv.kernel_size[1])

    handles = [m.register_forward_hook(hook) for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and n.startswith('layer')
               and not n.endswith('gate.fc2')]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return sum(total)


@pytest.mark.parametrize('depth', [18, 50])
def test_pruned_costs_what_the_gates_count(build_gated, depth):
    """The pruned blocks' conv MACs are the thresholded gated blocks' expected MACs (G1's
    ``gate_stats['gated_gflops']``), and the state-dict names are ResNet's."""
    gated = build_gated(dict(type='GatedResNet', depth=depth), {}, seed=3)
    pruned, _ = prune_model(gated, dict(type='GatedResNet', depth=depth))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        gated(x)
    assert _block_macs(pruned, x) == pytest.approx(gated.gate_stats['gated_gflops'] * 1e9,
                                                   rel=1e-6)
    assert set(pruned.state_dict()) == set(ResNet(depth=depth).state_dict())


def test_state_dict_from_full_also_slices_a_plain_resnet(build_gated):
    gated = build_gated(dict(type='GatedResNet', depth=18), {}, seed=0)
    channels = gated_channel_cfg(gated)
    plain = ResNet(depth=18)  # upstream eval() returns None: no chaining
    pruned = PrunedResNet(depth=18, channel_cfg=channels).eval()
    pruned.load_state_dict(pruned.state_dict_from_full(plain.state_dict()))
    kept = channels['blocks']['layer1.0']
    w = plain.layer1[0].conv1.weight[kept['conv1']][:, kept['input']]
    assert torch.equal(pruned.layer1[0].conv1.weight, w)


def test_backbone_contract(build_gated):
    channels = gated_channel_cfg(build_gated(dict(type='GatedResNet', depth=50), {}, 0))
    model = PrunedResNet(depth=50, channel_cfg=channels, frozen_stages=1, norm_eval=True,
                         out_indices=(1, 3))
    model.train()
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert not model.norm1.training and not model.layer1[0].norm1.training
    assert not model.layer3[0].norm1.training  # norm_eval
    assert all(p.requires_grad for p in model.layer2.parameters())
    outs = model(torch.rand(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 512, 8, 8), (1, 2048, 2, 2)]


def test_channel_json_round_trip(build_gated, tmp_path):
    gated = build_gated(dict(type='GatedResNet', depth=18), {}, 0)
    channels = gated_channel_cfg(gated)
    path = tmp_path / 'x_channels.json'
    path.write_text(json.dumps(channels))
    a = PrunedResNet(depth=18, channel_cfg=str(path))
    b = PrunedResNet(depth=18, channel_cfg=channels)
    assert {k: v.shape for k, v in a.state_dict().items()} == \
        {k: v.shape for k, v in b.state_dict().items()}


@pytest.fixture(scope='module')
def r18_channels(build_gated):
    return gated_channel_cfg(build_gated(dict(type='GatedResNet', depth=18), {}, 0))


@pytest.mark.parametrize('edit, error, match', [
    (lambda c: c['blocks'].pop('layer3.1'), ValueError, r"missing \['layer3.1'\]"),
    (lambda c: c['blocks'].update({'layer5.0': {}}), ValueError, r"unknown \['layer5.0'\]"),
    (lambda c: c['blocks']['layer2.0'].pop('downsample'), ValueError,
     r"block 'layer2.0'.*missing \['downsample'\]"),
    (lambda c: c['blocks']['layer2.1'].update(downsample=[0]), ValueError,
     r"block 'layer2.1'.*no projection.*unknown \['downsample'\]"),
    (lambda c: c['blocks']['layer1.1'].update(conv1=[3, 1]), ValueError,
     r"block 'layer1.1' position 'conv1': indices must be strictly increasing in \[0, 64\)"),
    (lambda c: c['blocks']['layer1.1'].update(conv1=[0, 64]), ValueError,
     r"'layer1.1' position 'conv1'.*\[0, 64\)"),
    (lambda c: c['blocks']['layer4.1'].update(input=[]), ValueError,
     r"block 'layer4.1' position 'input' keeps no channel"),
    (lambda c: c['blocks']['layer4.1'].update(input='0-3'), TypeError, 'list of channel indices'),
    (lambda c: c.update(depth=34), ValueError, 'depth-34 network.*depth=18'),
    (lambda c: c.pop('blocks'), TypeError, 'a "blocks" dict'),
])
def test_bad_channel_cfg_is_a_clear_error(r18_channels, edit, error, match):
    channels = copy.deepcopy(r18_channels)
    edit(channels)
    with pytest.raises(error, match=match):
        PrunedResNet(depth=18, channel_cfg=channels)


def test_missing_channel_json_and_wrong_checkpoint_are_clear_errors(tmp_path, r18_channels):
    with pytest.raises(FileNotFoundError, match='no.json.*tools/export_pruned.py'):
        PrunedResNet(depth=18, channel_cfg=str(tmp_path / 'no.json'))
    pruned = PrunedResNet(depth=18, channel_cfg=r18_channels)
    with pytest.raises(KeyError, match='no .layer1.0.conv1.weight'):
        pruned.state_dict_from_full({k: v for k, v in ResNet(depth=18).state_dict().items()
                                     if k != 'layer1.0.conv1.weight'})
    wide = ResNet(depth=18, base_channels=128).state_dict()
    with pytest.raises(ValueError, match='does not slice to'):
        pruned.state_dict_from_full(wide)


def test_dependent_gates_cannot_be_exported():
    gated = GatedResNet(depth=18, gate_type='dependent')
    with pytest.raises(ValueError, match='data-dependent.*active_channel_inference'):
        gated_channel_cfg(gated)
    with pytest.raises(TypeError, match=r"only \[.*'GatedResNet'.*backbones can be exported"):
        gated_channel_cfg(ResNet(depth=18))


def test_export_pruned_writes_a_checkpoint_and_channels(randomize, tmp_path):
    """export_pruned on a config + checkpoint: the written checkpoint, loaded into the model a
    config with ``type='PrunedResNet', channel_cfg=<json>`` builds, predicts as the gated
    model thresholded."""
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint, save_checkpoint

    from mmmod.analysis.complexity import model_from_config
    gated_cfg = dict(type='GatedResNet', depth=18, gate_type='independent', gate_loss=None)
    head = dict(type='LinearClsHead', num_classes=5, in_channels=512)
    text = (f"default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier', "
            f"backbone={gated_cfg!r}, neck=dict(type='GlobalAveragePooling'), head={head!r})\n")
    (tmp_path / 'gated_r18.py').write_text(text)
    cfg = Config.fromfile(str(tmp_path / 'gated_r18.py'))
    model = model_from_config(cfg)
    randomize(model, 5)
    save_checkpoint(dict(state_dict=model.state_dict(), meta=dict(epoch=3)),
                    str(tmp_path / 'gated.pth'))

    result = export_pruned(cfg, str(tmp_path / 'gated.pth'), str(tmp_path / 'out'),
                           shape=(64, 64))
    assert result['checkpoint'].endswith('out/gated_r18_pruned.pth')
    assert result['channels'].endswith('out/gated_r18_channels.json')
    assert result['macs']['after'] < 0.9 * result['macs']['before']
    assert result['params']['after'] < result['params']['before']
    saved = torch.load(result['checkpoint'], map_location='cpu')
    assert saved['meta']['epoch'] == 3 and saved['meta']['pruned']['tau'] == 0.5

    pruned_cfg = Config(dict(cfg.to_dict(), model=dict(
        cfg.model.to_dict(), backbone=dict(type='PrunedResNet', depth=18,
                                           channel_cfg=result['channels']))))
    pruned = model_from_config(pruned_cfg)
    load_checkpoint(pruned, result['checkpoint'], map_location='cpu', strict=True)
    model.eval(), pruned.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = model(x, mode='tensor'), pruned(x, mode='tensor')
    assert torch.allclose(expected, got, rtol=1e-5, atol=1e-5 * expected.abs().max())


# GatedMobileNetV2 residual blocks may close a position entirely (no group always on there)
MBV2_CLOSED = {'layer3.1': 'expand', 'layer3.2': 'input', 'layer4.1': 'output'}


@pytest.mark.parametrize('seed', [0, 1])
def test_pruned_mobilenet_v2_equals_thresholded_gated(randomize, seed):
    gated = GatedMobileNetV2(gate_type='independent', gate_loss=None, out_indices=(1, 3, 5, 7))
    randomize(gated, seed)
    blocks = dict(iter_gated_blocks(gated))
    for name, pos in MBV2_CLOSED.items():
        set_position(blocks[name], pos, on=False)
    gated.eval()
    pruned, channels = prune_model(gated, dict(type='GatedMobileNetV2', out_indices=(1, 3, 5, 7)))
    assert isinstance(pruned, PrunedMobileNetV2)
    assert all(channels['blocks'][n][p] == [] for n, p in MBV2_CLOSED.items())
    assert 'input' not in channels['blocks']['layer1.0']  # t = 1: no input gate
    assert len(pruned.layer4[1].conv) == 0  # output closed: the identity
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected, got = gated(x), pruned(x)
    for e, o in zip(expected, got):
        assert e.shape == o.shape
        assert (e - o).abs().max() <= 1e-5 * e.abs().max(), (e - o).abs().max()
    assert sum(p.numel() for p in pruned.parameters()) < 0.8 * sum(
        p.numel() for n, p in gated.named_parameters() if '.gate.' not in n)


def test_pruned_mobilenet_v2_needs_channels_in_non_residual_blocks():
    channels = gated_channel_cfg(GatedMobileNetV2(gate_type='independent'))
    channels['blocks']['layer2.0']['output'] = []  # stride 2: no residual connection
    with pytest.raises(ValueError, match="block 'layer2.0' position 'output' keeps no channel"):
        PrunedMobileNetV2(channel_cfg=channels)
