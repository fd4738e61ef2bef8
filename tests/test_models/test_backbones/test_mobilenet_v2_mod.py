import pytest
import torch
from mmpretrain.models.backbones import MobileNetV2

from mmmod.analysis.benchmark import build_classifier
from mmmod.models import MobileNetV2MoD, MoDBlock


def kinds(model):
    return [['mod' if isinstance(b, MoDBlock) else 'std' for b in getattr(model, f'layer{i}')]
            for i in range(1, 8)]


@pytest.mark.parametrize('arch,rows', [
    ('MoD', [(16, 1), (24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1)]),
    ('MoD-L', [(16, 1), (32, 2), (64, 3), (96, 4), (128, 3), (160, 3), (320, 1)]),
])
def test_table_and_alternating_mod_blocks(arch, rows):
    model = MobileNetV2MoD(arch=arch)
    for stage, (c, n) in zip(kinds(model), rows):
        assert stage == ['mod' if i % 2 else 'std' for i in range(n)]
    for i, (c, n) in enumerate(rows, 1):
        for block in getattr(model, f'layer{i}'):
            if isinstance(block, MoDBlock):
                assert block.channels == c and block.k == max(1, c // 16)
                # inverted residual k -> 6k -> k: pw, dw, pw-linear
                pw, dw, pwl = block.branch
                assert pw.conv.in_channels == block.k and pw.conv.out_channels == 6 * block.k
                assert dw.conv.groups == 6 * block.k and pwl.conv.out_channels == block.k
                assert not pwl.with_activation


@pytest.mark.parametrize('arch,paper_params_m', [('MoD', 2.94), ('MoD-L', 3.34)])
def test_parameter_count_matches_paper_table2(arch, paper_params_m):
    model = build_classifier(dict(type='MobileNetV2MoD', arch=arch))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - paper_params_m) < 0.01, params
    baseline = build_classifier('mobilenetv2')
    assert abs(sum(p.numel() for p in baseline.parameters()) / 1e6 - 3.5) < 0.01


def test_standard_parts_load_upstream_weights():
    upstream = MobileNetV2().state_dict()
    model = MobileNetV2MoD(arch='MoD')
    result = model.load_state_dict(upstream, strict=False)
    replaced = {f'layer{i}.{b}' for i, n in enumerate((1, 2, 3, 4, 3, 3, 1), 1)
                for b in range(1, n, 2)}
    assert all('.'.join(k.split('.')[:2]) in replaced for k in result.unexpected_keys)
    assert all('.'.join(k.split('.')[:2]) in replaced for k in result.missing_keys)
    for k, v in model.state_dict().items():
        if k in upstream:
            assert torch.equal(v, upstream[k])


def test_outputs_frozen_and_norm_eval():
    model = MobileNetV2MoD(out_indices=(2, 4, 7), frozen_stages=2, norm_eval=True)
    model.train()
    assert not any(p.requires_grad for p in model.layer2.parameters())
    assert all(p.requires_grad for p in model.layer3.parameters())
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 8), (1, 96, 4, 4), (1, 1280, 2, 2)]


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = MobileNetV2MoD(arch='MoD-L').train()
    model(torch.randn(2, 3, 64, 64))[-1].square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(arch='MoD-XL'), KeyError, r"choose from \['MoD', 'MoD-L'\]"),
    (dict(arch=[[6, 24, 2]]), ValueError, r'\[t, c, n, s\] rows'),
    (dict(channel_reduction=0), ValueError, 'integer >= 1'),
    (dict(fusion='middle'), ValueError, 'fusion must be one of'),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MobileNetV2MoD(**kwargs)


def test_input_channel_mismatch():
    with pytest.raises(ValueError, match=r'expects \(N, 3, H, W\)'):
        MobileNetV2MoD()(torch.randn(1, 4, 32, 32))
