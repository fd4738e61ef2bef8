"""Batch-1 active-channel inference of data-dependent gated blocks
(mmmod/models/layers/active_channels.py): equal to the masked gated model, same gates."""
import pytest
import torch
import torch.nn as nn

from mmmod.models.backbones import GatedMobileNetV2, GatedResNet, GatedResNetV1c
from mmmod.models.layers.active_channels import active_channel_forward, active_channel_inference
from mmmod.models.layers.gumbel_gate import iter_gated_blocks


@pytest.fixture(scope='module')
def dependent_model(randomize_norms):
    """``dependent_model(cls, seed, **kwargs)``: a dependent-gate model with random BN
    statistics (tests/conftest.py) and gate biases that switch about half the gates off (the
    gate networks' weights stay random, so gates vary per image)."""
    def dependent_model(cls, seed, **kwargs):
        model = cls(gate_type='dependent', out_indices=(0, 1, 2, 3), **kwargs)
        g = torch.Generator().manual_seed(seed)
        randomize_norms(model, g)
        with torch.no_grad():
            for _, block in iter_gated_blocks(model):
                if block.gate is not None:
                    bias = block.gate.fc2.bias.view(-1, 2)  # (G, 2) off, on
                    bias[:, 0] = 0
                    bias[:, 1] = torch.randn(bias.shape[0], generator=g)
        model.eval()
        return model
    return dependent_model


CASES = {
    'r18': (GatedResNet, dict(depth=18)),
    'r50': (GatedResNet, dict(depth=50)),
    'r50-v1c-dilated': (GatedResNetV1c, dict(depth=50, strides=(1, 2, 1, 1),
                                             dilations=(1, 1, 2, 4), contract_dilation=True)),
    'r18-avgdown': (GatedResNet, dict(depth=18, avg_down=True)),
}
SEEDED = [('r18', 0), ('r18', 1), ('r50', 0), ('r50', 1), ('r50-v1c-dilated', 0),
          ('r18-avgdown', 0)]


@pytest.mark.parametrize('case, seed', SEEDED, ids=[f'{c}-seed{s}' for c, s in SEEDED])
def test_active_channels_equal_masking(dependent_model, case, seed):
    cls, kwargs = CASES[case]
    model = dependent_model(cls, seed, **kwargs)
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        masked = model(x)
        masked_gates = [dict(b.last_gates) for _, b in iter_gated_blocks(model)]
        masked_stats = model.gate_stats
        with active_channel_inference(model) as same:
            assert same is model
            fast = model(x)
    # the same gates were computed, and some are off (else both paths are the full network)
    for (_, block), gates in zip(iter_gated_blocks(model), masked_gates):
        assert block.last_gates.keys() == gates.keys()
        assert all(torch.equal(block.last_gates[p], z) for p, z in gates.items())
    assert 0.2 < masked_stats['gate_rate'] < 0.8, masked_stats
    assert model.gate_stats == pytest.approx(masked_stats)
    for m, f in zip(masked, fast):
        assert (m - f).abs().max() <= 1e-5 * m.abs().max(), (m - f).abs().max()
    # the context put the blocks' own forward back
    assert all('forward' not in vars(b) for _, b in iter_gated_blocks(model))


def test_single_block_function_and_errors(dependent_model):
    model = dependent_model(GatedResNet, 0, depth=18)
    block = model.layer2[0]
    x = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        assert torch.allclose(active_channel_forward(block, x), block(x), atol=1e-5)
    with pytest.raises(ValueError, match=r'one image at a time.*got \(2, 64, 16, 16\)'):
        active_channel_forward(block, torch.randn(2, 64, 16, 16))
    block.train()
    with pytest.raises(RuntimeError, match='for inference'):
        active_channel_forward(block, x)
    with pytest.raises(TypeError, match='gated BasicBlock / Bottleneck / InvertedResidual'):
        active_channel_forward(nn.Conv2d(3, 3, 1), x)
    with pytest.raises(ValueError, match='no gated blocks'):
        with active_channel_inference(nn.Sequential(nn.Conv2d(3, 3, 1))):
            pass


def test_context_restores_forward_after_an_error(dependent_model):
    model = dependent_model(GatedResNet, 0, depth=18)
    with pytest.raises(ValueError, match='one image'):
        with active_channel_inference(model):
            model(torch.randn(2, 3, 32, 32))
    out = model(torch.randn(2, 3, 32, 32))  # masked path again, any batch size
    assert out[-1].shape == (2, 512, 1, 1)


# residual inverted residuals may close a position completely (no group always on there)
MBV2_CLOSED = {'layer3.1': 'expand', 'layer3.2': 'input', 'layer4.1': 'output'}


@pytest.mark.parametrize('seed', [0, 1])
def test_active_channels_equal_masking_mobilenet_v2(dependent_model, seed):
    model = dependent_model(GatedMobileNetV2, seed, gate_loss=None)
    blocks = dict(iter_gated_blocks(model))
    with torch.no_grad():
        for name, pos in MBV2_CLOSED.items():
            block, start = blocks[name], 0
            for p in block.gate_positions:
                if p == pos:
                    bias = block.gate.fc2.bias.view(-1, 2)  # (G, 2) off, on
                    bias[start:start + block.channel_gates[p].num_gates, 1] = -100.
                start += block.channel_gates[p].num_gates
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        masked = model(x)
        closed = {n: blocks[n].last_gates[p] for n, p in MBV2_CLOSED.items()}
        with active_channel_inference(model):
            fast = model(x)
    assert all(not z[:, blocks[n].channel_gates[MBV2_CLOSED[n]].always_on:].any()
               for n, z in closed.items())
    assert 0.2 < model.gate_stats['gate_rate'] < 0.8
    for m, f in zip(masked, fast):
        assert (m - f).abs().max() <= 1e-5 * m.abs().max(), (m - f).abs().max()
