import pytest
import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm
from mmpretrain.models.backbones import ResNet

from mmmod.models import GatedResNet, GatedResNetV1c, iter_gated_blocks

# a tiny ResNet-18: 16-wide stem and first stage, 4 filters per gate everywhere
TINY = dict(depth=18, stem_channels=16, base_channels=16,
            granularity=dict(input=4, conv1=4, conv2=4, downsample=4))


def test_low_granularity_follows_the_paper():
    model = GatedResNet(depth=50)
    for stage, g in enumerate((16, 32, 64, 128), 1):
        block = getattr(model, f'layer{stage}')[1]
        assert block.gate_positions == ('input', 'conv1', 'conv2', 'conv3')
        sizes = [block.channel_gates[p].group_size for p in block.gate_positions]
        assert sizes == [g, g // 2, g // 2, g]
        assert all(block.channel_gates[p].always_on == 1 for p in block.gate_positions)
    first = model.layer2[0]
    assert first.gate_positions[-1] == 'downsample'
    assert first.channel_gates['downsample'].group_size == 32
    basic = GatedResNet(depth=18).layer4[0]
    assert {basic.channel_gates[p].group_size for p in basic.gate_positions} == {64}


def test_plain_resnet_state_dict_loads_with_only_gates_missing():
    upstream = ResNet(depth=50)
    model = GatedResNet(depth=50)
    result = model.load_state_dict(upstream.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all('.gate.' in k for k in result.missing_keys)
    assert all('.gate.' in n for n, _ in model.named_parameters()
               if n not in upstream.state_dict())


@pytest.mark.parametrize('depth', [18, 50])
def test_mode_on_equals_the_ungated_network(depth):
    """All gates on: every gate multiplies by 1, so the gated model IS the upstream ResNet with
    the same weights (and so is threshold mode while every p_on > tau, e.g. at init)."""
    torch.manual_seed(0)
    upstream = ResNet(depth=depth, out_indices=(0, 1, 2, 3), zero_init_residual=False)
    upstream.init_weights()
    model = GatedResNet(depth=depth, gate_type='independent', out_indices=(0, 1, 2, 3),
                        gate_mode='on')
    model.load_state_dict(upstream.state_dict(), strict=False)
    upstream.eval(), model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = upstream(x)
        for mode in ('on', 'threshold'):
            model.set_gate_mode(mode)
            assert all(torch.equal(a, b) for a, b in zip(ref, model(x))), mode
        model.set_gate_mode('threshold', tau=0.99)  # p_on = 0.98 < tau: all learned gates off
        assert not torch.allclose(ref[-1], model(x)[-1])
        assert model.gate_stats['gate_rate'] == 0.0


def test_threshold_deterministic_stochastic_not():
    torch.manual_seed(0)
    model = GatedResNet(**TINY, gate_type='independent').eval()
    with torch.no_grad():
        for block in (b for _, b in iter_gated_blocks(model)):
            block.gate.logits[:, 1] = torch.randn(block.num_learned_gates)  # p_on ~ 0.5
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(model(x)[-1], model(x)[-1])
        z = model.layer1[0].last_gates['conv1']
        p_on = model.layer1[0].gate.logits.softmax(-1)[:, 1]
        start = model.layer1[0].channel_gates['input'].num_gates
        learned = p_on[start:start + model.layer1[0].channel_gates['conv1'].num_gates]
        assert torch.equal(z[0, 1:].bool(), learned > 0.5) and torch.equal(z[0], z[1])
        model.set_gate_mode('stochastic')
        assert not torch.equal(model(x)[-1], model(x)[-1])
    with pytest.raises(ValueError, match=r"\['threshold', 'stochastic', 'on'\]"):
        model.set_gate_mode('ensemble')
    with pytest.raises(ValueError, match=r"\['threshold', 'stochastic', 'on'\]"):
        GatedResNet(**TINY, gate_mode='all')


def test_gated_off_groups_contribute_nothing():
    """A block with some groups off equals the same block whose corresponding filters are
    physically removed (zero weights) and all gates on."""
    torch.manual_seed(0)
    model = GatedResNet(**TINY, gate_type='independent', zero_init_residual=False)
    model.init_weights()
    block = model.layer2[0].eval()  # 16 -> 32, with projection shortcut
    with torch.no_grad():
        for n in block.gate.logits:
            n[1] = -4.0 if torch.rand(()) < 0.5 else 4.0
        x = torch.randn(2, 16, 8, 8)
        y = block(x)
        z = block.last_gates
        assert all(z[p][:, 0].eq(1).all() for p in z)  # first group always on
        ref = model.layer2[0]
        for conv, norm, pos in ((ref.conv1, ref.norm1, 'conv1'), (ref.conv2, ref.norm2, 'conv2'),
                                (ref.downsample[0], ref.downsample[1], 'downsample')):
            off = ~ref.channel_gates[pos].channel_mask(z[pos])[0]
            conv.weight[off] = 0
            norm.weight[off], norm.bias[off] = 0, 0
        keep_in = ref.channel_gates['input'].channel_mask(z['input'])[0]
        ref.conv1.weight[:, ~keep_in] = 0
        ref.set_gate_mode('on')
        assert torch.allclose(ref(x), y, atol=1e-5)


def _active(gate, z):
    return int(gate.active_channels(z)[0])


@pytest.mark.parametrize('depth,style', [(18, 'pytorch'), (50, 'pytorch'), (50, 'caffe')])
def test_block_flops_equal_flop_count_of_smaller_convs(depth, style):
    torch.manual_seed(0)
    model = GatedResNet(depth=depth, style=style, gate_type='independent',
                        stem_channels=16, base_channels=16,
                        granularity={p: 4 for p in model_positions(depth)}).eval()
    block = model.layer2[0]
    with torch.no_grad():
        block.gate.logits[:, 1] = torch.randn(block.num_learned_gates) * 3
        x = torch.randn(1, block.in_channels, 9, 9)  # odd size: exercises the output rounding
        block(x)
    z = block.last_gates
    c = {p: _active(block.channel_gates[p], z[p]) for p in z}
    c_in = c['input']
    convs = [('conv1', c_in, c['conv1']), ('conv2', c['conv1'], c['conv2'])]
    if depth == 50:
        convs.append(('conv3', c['conv2'], c['conv3']))
    expected, h = 0, x.shape[-1]
    for name, cin, cout in convs:
        conv = getattr(block, name)
        small = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                          bias=False)
        expected += FlopAnalyzer(small, torch.randn(1, cin, h, h)).total()
        h = small(torch.randn(1, cin, h, h)).shape[-1]
    ds = nn.Conv2d(block.in_channels, c['downsample'], 1, 2, bias=False)
    expected += FlopAnalyzer(ds, torch.randn(1, block.in_channels, 9, 9)).total()
    assert block.flops(block.active_counts()).item() == expected
    full = {p: torch.tensor([float(g.channels)]) for p, g in block.channel_gates.items()}
    assert block.full_flops() == block.flops(full).item() > expected


def model_positions(depth):
    return GatedResNet.arch_settings[depth][0].gateable_positions


def test_gradients_reach_gate_logits_and_every_parameter():
    torch.manual_seed(0)
    for gate_type in ('dependent', 'independent'):
        model = GatedResNet(**TINY, gate_type=gate_type, zero_init_residual=False,
                            out_indices=(0, 1, 2, 3))
        model.init_weights()
        model.train()
        outs = model(torch.randn(4, 3, 32, 32))
        sum(o.square().mean() for o in outs).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (gate_type, name)


def test_gate_loss_rides_on_the_last_output_and_stats_are_side_outputs():
    torch.manual_seed(0)
    model = GatedResNet(**TINY, gate_type='independent',
                        gate_loss=dict(type='BatchActivationLoss', target=0.0)).train()
    outs = model(torch.randn(2, 3, 32, 32))
    assert isinstance(outs, tuple) and len(outs) == 1  # return type unchanged
    stats = model.gate_stats
    assert set(stats) == {'gate_rate', 'gate_flops_ratio', 'gated_gflops', 'gate_net_gflops',
                          'gate_loss'}
    assert stats['gate_loss'] == pytest.approx(stats['gate_rate'] ** 2)
    (outs[-1] * 0).sum().backward()  # no task signal: only the gate loss reaches the logits
    grads = torch.cat([b.gate.logits.grad for _, b in iter_gated_blocks(model)])
    assert (grads[:, 1] > 0).all()  # target 0: every on-logit is pushed down
    model.gate_loss_grad_scale = 8.0
    for _, b in iter_gated_blocks(model):
        b.gate.logits.grad = None
    torch.manual_seed(1)
    (model(torch.randn(2, 3, 32, 32))[-1] * 0).sum().backward()
    scaled = torch.cat([b.gate.logits.grad for _, b in iter_gated_blocks(model)])
    assert (scaled[:, 1] > 0).all()
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert 'gate_loss' not in model.gate_stats and model.gate_stats['gate_rate'] == 1.0


def _train_gates_only(model, steps, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x = torch.randn(8, 3, 16, 16)
    rates = []
    for _ in range(steps):
        (model(x)[-1] * 0).sum().backward()  # the gate loss is the only loss
        opt.step()
        opt.zero_grad()
        rates.append(model.gate_stats)
    return rates


@pytest.mark.parametrize('gate_type', ['dependent', 'independent'])
@pytest.mark.parametrize('loss,key', [('BatchActivationLoss', 'gate_rate'),
                                      ('FLOPsActivationLoss', 'gate_flops_ratio')])
def test_activation_loss_pulls_rate_to_target(gate_type, loss, key):
    """THE mechanism: starting ~98% on, the batch activation loss alone drives the activation
    rate (or the FLOPs ratio, for the FLOPs form) to the target t = 0.5."""
    torch.manual_seed(0)
    model = GatedResNet(**TINY, num_stages=2, strides=(1, 2), dilations=(1, 1),
                        out_indices=(1,), gate_type=gate_type,
                        gate_loss=dict(type=loss, target=0.5)).train()
    stats = _train_gates_only(model, steps=60, lr=LR)
    assert stats[0][key] > 0.9
    final = sum(s[key] for s in stats[-10:]) / 10
    assert abs(final - 0.5) < 0.1, [round(s[key], 2) for s in stats[::5]]


LR = 20.0


def test_backbone_contract_frozen_stages_include_gates_and_norm_eval():
    model = GatedResNet(**TINY, frozen_stages=1, norm_eval=True)
    model.train()
    frozen = list(model.conv1.parameters()) + list(model.layer1.parameters())
    assert any('.gate.' in n for n, _ in model.layer1.named_parameters(prefix='layer1'))
    assert not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert not model.layer1[0].training and model.layer2[0].training
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))


def test_zero_init_residual_and_pretrained(tmp_path):
    model = GatedResNet(**TINY)
    model.init_weights()
    assert model.layer1[0].norm2.weight.abs().sum() == 0
    on_bias = model.layer1[0].gate.fc2.bias.view(-1, 2)
    assert torch.allclose(on_bias, torch.tensor([0.1, 4.0]).expand_as(on_bias))
    ckpt = tmp_path / 'r18.pth'
    torch.save(dict(state_dict=ResNet(depth=18).state_dict()), ckpt)
    with pytest.warns(DeprecationWarning):
        model = GatedResNet(depth=18, pretrained=str(ckpt))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(ckpt))


def test_mmseg_and_mmdet_settings():
    model = GatedResNetV1c(depth=50, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                           strides=(1, 2, 1, 1), contract_dilation=True).eval()
    assert hasattr(model, 'stem') and model.layer3[0].conv2.dilation == (1, 1)
    assert model.layer3[1].conv2.dilation == (2, 2)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [16, 8, 8, 8]
    det = GatedResNet(depth=50, out_indices=(0, 1, 2, 3), frozen_stages=1, norm_eval=True,
                      style='caffe')
    assert det.layer2[0].conv1.stride == (2, 2)
    det.train()
    with torch.no_grad():
        assert det(torch.randn(1, 3, 64, 96))[-1].shape == (1, 2048, 2, 3)


def test_built_from_each_library_registry():
    from mmdet.registry import MODELS as DET
    from mmpretrain.registry import MODELS as CLS
    from mmseg.registry import MODELS as SEG
    for registry in (CLS, SEG, DET):
        for cfg in (dict(type='GatedResNet', depth=18), dict(type='GatedResNetV1c', depth=18),
                    dict(type='GatedMobileNetV2', widen_factor=0.5)):
            assert type(registry.build(cfg)).__name__ == cfg['type']
        assert type(registry.build(dict(type='BatchActivationLoss'))).__name__ == \
            'BatchActivationLoss'


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(depth=26), KeyError, r'invalid depth 26 for GatedResNet; choose from \[18, 34, 50, '
     r'101, 152\]'),
    (dict(depth=50, granularity='high'), KeyError, r"granularity 'high'.*\['low'\]"),
    (dict(depth=50, granularity=dict(input=4)), ValueError,
     r"positions \['input', 'conv1', 'conv2', 'conv3', 'downsample'\].*missing \['conv1'"),
    (dict(depth=18, granularity=dict(input=4, conv1=4, conv2=(4, 4), downsample=4)), ValueError,
     r"granularity\['conv2'\].*one per stage \(4 stages\)"),
    (dict(depth=18, gate_type='both'), ValueError, r"\['dependent', 'independent'\]"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GatedResNet(**kwargs)
