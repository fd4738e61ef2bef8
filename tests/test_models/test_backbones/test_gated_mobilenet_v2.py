import pytest
import torch
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm
from mmpretrain.models.backbones import MobileNetV2

from mmmod.models import GatedMobileNetV2, iter_gated_blocks

# the paper's Sec. 4.2 table: t, c, n, s, g_inp, g_out, g_exp
PAPER_LOW = [(1, 16, 1, 1, 8, 8, 16), (6, 24, 2, 2, 8, 8, 24), (6, 32, 3, 2, 8, 16, 24),
             (6, 64, 4, 2, 8, 16, 32), (6, 96, 3, 1, 16, 32, 48), (6, 160, 3, 2, 16, 32, 64),
             (6, 320, 1, 1, 32, 64, 64)]


def test_low_granularity_table_and_always_on_rule():
    model = GatedMobileNetV2()
    for row, (t, c, n, s, g_in, g_out, g_exp) in enumerate(PAPER_LOW, 1):
        layer = getattr(model, f'layer{row}')
        assert len(layer) == n
        for i, block in enumerate(layer):
            assert block.channel_gates['output'].group_size == g_out
            assert block.channel_gates['expand'].group_size == g_exp
            assert ('input' in block.channel_gates) == (t != 1)
            if t != 1:
                assert block.channel_gates['input'].group_size == g_in
            residual = i > 0  # stride 1 and C_in == C_out
            # "we keep 1 gate open for non-residual layers" (Sec. 4.2)
            assert all(g.always_on == (0 if residual else 1) for g in block.channel_gates.values())


def test_state_dict_and_mode_on_equal_upstream():
    torch.manual_seed(0)
    upstream = MobileNetV2(widen_factor=0.5, out_indices=(2, 7))
    upstream.init_weights()
    model = GatedMobileNetV2(widen_factor=0.5, out_indices=(2, 7), gate_mode='on')
    result = model.load_state_dict(upstream.state_dict(), strict=False)
    assert not result.unexpected_keys and all('.gate.' in k for k in result.missing_keys)
    upstream.eval(), model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(upstream(x), model(x)))
        model.set_gate_mode('threshold', 0.999)
        model(x)
    assert model.gate_stats['gate_rate'] == 0.0  # every learned gate closed, still runs


def test_block_flops_follow_the_paper_formula():
    """H*W*C_exp*(C_in + 9/s^2 + C_out/s^2) from the active counts (Sec. 3.4)."""
    torch.manual_seed(0)
    model = GatedMobileNetV2(gate_type='independent').eval()
    for block in (model.layer3[0], model.layer3[1], model.layer1[0]):
        with torch.no_grad():
            block.gate.logits[:, 1] = torch.randn(block.num_learned_gates) * 3
            h = 12
            block(torch.randn(1, block.in_channels, h, h))
        c = {p: float(v) for p, v in block.active_counts().items()}
        s = block.conv[-2].conv.stride[0]
        c_in = c.get('input', 0.0)  # t = 1: no expansion conv, no C_in term
        expected = h * h * c['expand'] * (c_in + 9 / s ** 2 + c['output'] / s ** 2)
        assert block.flops(block.active_counts()).item() == pytest.approx(expected)
        assert c['expand'] < block.hidden_channels or c['output'] < block.out_channels


def test_gradients_reach_every_parameter_and_loss_attaches():
    torch.manual_seed(0)
    model = GatedMobileNetV2(widen_factor=0.5, out_indices=(7,)).train()
    assert model.gate_loss.__class__.__name__ == 'FLOPsActivationLoss'
    out = model(torch.randn(4, 3, 32, 32))[-1]
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    # at width 0.5 a few narrow tensors fit in one always-on group: those blocks have no head
    heads = [b.gate for _, b in iter_gated_blocks(model) if b.gate is not None]
    assert len(heads) >= 15 and all(h.fc2.bias.grad.abs().sum() > 0 for h in heads)
    assert 0 < model.gate_stats['gate_flops_ratio'] <= 1 and 'gate_loss' in model.gate_stats


def test_contract_frozen_stages_norm_eval():
    model = GatedMobileNetV2(widen_factor=0.5, frozen_stages=2, norm_eval=True)
    model.train()
    assert not any(p.requires_grad for p in model.layer2.parameters())
    assert any('.gate.' in n for n, _ in model.layer2.named_parameters(prefix='layer2'))
    assert all(p.requires_grad for p in model.layer3.parameters())
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(granularity='high'), KeyError, r"granularity 'high'.*\['low'\]"),
    (dict(granularity=dict(input=8, expand=8, out=8)), ValueError,
     r"missing \['output'\], unknown \['out'\]"),
    (dict(granularity=dict(input=8, expand=8, output=(8, 8))), ValueError,
     r'one per stage \(7 stages\)'),
    (dict(gate_mode='ensemble'), ValueError, r"\['threshold', 'stochastic', 'on'\]"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GatedMobileNetV2(**kwargs)
