"""ResNetPiX: PiX replaces conv1 + norm1 + act of every bottleneck, with the squeeze ratio of the
conv it replaces; the rest is mmpretrain's ResNet and its backbone contract."""
import pytest
import torch
from mmengine.registry import DefaultScope
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm
from mmpretrain.models.backbones import ResNet

from mmmod.models import PiX, ResNetPiX, ResNetV1cPiX
from mmmod.models.backbones.resnet_pix import PiXBottleneck

# a narrow ResNet-50 (widths / 4) where only the wiring matters, to keep the tests fast
SLIM = dict(stem_channels=16, base_channels=16)
STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def squeeze_ratio(stage, block):
    """in_channels / mid_channels of ResNet's conv1: 64/64, then 2 for block 0 of stages 2-4."""
    if block > 0:
        return 4
    return 1 if stage == 1 else 2


@pytest.mark.parametrize('depth', sorted(STAGES))
def test_every_bottleneck_has_pix_with_the_replaced_squeeze_ratio(depth):
    model = ResNetPiX(depth=depth)
    for s, n in enumerate(STAGES[depth], 1):
        layer = getattr(model, f'layer{s}')
        assert len(layer) == n
        for b, block in enumerate(layer):
            assert isinstance(block, PiXBottleneck) and isinstance(block.pix, PiX)
            assert block.pix.zeta == squeeze_ratio(s, b)
            assert block.pix.out_channels == block.conv2.in_channels == 64 * 2**(s - 1)
            assert not hasattr(block, 'conv1') and not hasattr(block, 'bn1')


def test_zeta_multiplier_narrows_the_whole_branch():
    model = ResNetPiX(depth=50, zeta_multiplier=2)
    block = model.layer3[1]  # C = 1024, ratio 4 * 2 = 8
    assert block.pix.zeta == 8 and block.pix.out_channels == 128
    assert (block.conv2.in_channels, block.conv2.out_channels, block.bn2.num_features,
            block.conv3.in_channels, block.conv3.out_channels) == (128, 128, 128, 128, 1024)
    assert model.layer1[0].pix.zeta == 2 and model.layer1[0].conv2.in_channels == 32
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 64, 64))[-1].shape == (1, 2048, 2, 2)


def test_same_parameters_as_resnet():
    """The FC of PiX (C -> C / zeta) has the weights of the conv it replaces; only the
    replaced norm's 2 * C / zeta affine parameters go (Table 1: 25.5M both)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    base, pix = ResNet(depth=50), ResNetPiX(depth=50)
    bn1 = sum(2 * m.bn1.num_features for m in base.modules() if hasattr(m, 'conv3'))
    assert count(pix) == count(base) - bn1


@pytest.mark.parametrize('mode', ['pix', 'avg', 'max'])
def test_outputs_and_modes(mode):
    model = ResNetPiX(depth=50, out_indices=(0, 1, 2, 3), mode=mode, tau=0.3).eval()
    assert all(m.mode == mode and m.tau == 0.3 for m in model.modules() if isinstance(m, PiX))
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, c, 64 // s, 64 // s) for c, s in
                                              zip((256, 512, 1024, 2048), (4, 8, 16, 32))]


def test_upstream_resnet_weights_load_except_the_replaced_squeeze():
    torch.manual_seed(0)
    up_sd = ResNet(depth=50).state_dict()
    model = ResNetPiX(depth=50)
    result = model.load_state_dict(up_sd, strict=False)
    blocks = [f'layer{s}.{b}' for s, n in enumerate(STAGES[50], 1) for b in range(n)]
    assert set(result.unexpected_keys) == {
        f'{b}.{k}' for b in blocks for k in ('conv1.weight', 'bn1.weight', 'bn1.bias',
                                             'bn1.running_mean', 'bn1.running_var',
                                             'bn1.num_batches_tracked')}
    assert set(result.missing_keys) == {f'{b}.pix.scorer.fc1.weight' for b in blocks}
    sd = model.state_dict()
    for k in sd:
        if k in up_sd:
            assert torch.equal(sd[k], up_sd[k]), k


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = ResNetPiX(depth=50, zero_init_residual=False, out_indices=(0, 1, 2, 3), **SLIM)
    model.init_weights()
    model.train()
    outs = model(torch.randn(2, 3, 32, 32))
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_stages_freeze_pix_and_norm_eval():
    model = ResNetPiX(depth=50, frozen_stages=2, norm_eval=True)
    model.train()
    frozen = [model.conv1, model.layer1, model.layer2]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert not model.layer2[1].pix.scorer.fc1.weight.requires_grad
    assert all(p.requires_grad for p in model.layer3.parameters())
    assert not model.layer1.training and not model.layer2.training and model.layer3.training
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))


def test_zero_init_residual_and_pix_init():
    model = ResNetPiX(depth=50)
    model.init_weights()
    assert all(m.norm3.weight.abs().sum() == 0 for m in model.modules()
               if isinstance(m, PiXBottleneck))
    fc = model.layer3[1].pix.scorer.fc1.weight  # Xavier uniform: bound sqrt(6 / (fan_in + out))
    bound = (6 / (fc.shape[0] + fc.shape[1]))**0.5
    assert fc.abs().max() <= bound and fc.abs().max() > 0.9 * bound


def test_mmseg_fcn_setting_deep_stem_dilation_contract():
    model = ResNetV1cPiX(depth=50, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                         strides=(1, 2, 1, 1), contract_dilation=True, norm_eval=False).eval()
    assert hasattr(model, 'stem') and not hasattr(model, 'conv1')
    assert model.layer3[0].conv2.dilation == (1, 1)  # contracted: 2 // 2
    assert model.layer3[1].conv2.dilation == (2, 2) and model.layer4[0].conv2.dilation == (2, 2)
    assert model.layer4[1].conv2.dilation == (4, 4)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [16, 8, 8, 8]  # output stride 8
    assert 'stem.0.conv.weight' in model.state_dict()


def test_mmdet_caffe_style_strides_the_pix_input():
    model = ResNetPiX(depth=50, out_indices=(0, 1, 2, 3), frozen_stages=1, norm_eval=True,
                      style='caffe')
    assert model.layer2[0].conv1_stride == 2 and model.layer2[0].conv2.stride == (1, 1)
    model.train()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert len(outs) == 4 and outs[-1].shape == (1, 2048, 2, 3)


def test_with_cp_and_avg_down_run():
    model = ResNetPiX(depth=50, with_cp=True, avg_down=True, drop_path_rate=0.1, **SLIM)
    model.train()
    out = model(torch.randn(2, 3, 32, 32, requires_grad=True))[-1]
    out.mean().backward()
    assert model.layer4[2].pix.scorer.fc1.weight.grad is not None


@pytest.mark.parametrize('scope,registry', [('mmpretrain', 'mmpretrain.registry'),
                                            ('mmseg', 'mmseg.registry'),
                                            ('mmdet', 'mmdet.registry')])
def test_builds_from_every_library(scope, registry):
    models = __import__(registry, fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        for name in ('ResNetPiX', 'ResNetV1cPiX'):
            model = models.build(dict(type=name, depth=50, out_indices=(3, )))
            assert type(model).__name__ == name


def test_jit_trace_in_eval():
    torch.manual_seed(0)
    model = ResNetPiX(depth=50, **SLIM).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 3, 32, 32), check_trace=False)
        x = torch.rand(2, 3, 64, 64)
        torch.testing.assert_close(traced(x)[-1], model(x)[-1])


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(depth=34), KeyError, r'invalid depth 34 for ResNetPiX; choose from \[50, 101, 152\]'),
    (dict(depth=50, zeta_multiplier=0), ValueError, 'zeta must be an integer >= 1, got 0'),
    (dict(depth=50, tau=1.5), ValueError, r'tau must be a number in \(0, 1\), got 1.5'),
    (dict(depth=50, mode='min'), ValueError, r"mode must be one of \['pix', 'avg', 'max'\]"),
    (dict(depth=50, stem_channels=96), ValueError, 'ratio must be an integer'),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ResNetPiX(**kwargs)


def test_input_channel_mismatch_and_pretrained(tmp_path):
    with pytest.raises(ValueError, match=r'expects \(N, 3, H, W\) input, got \(1, 1, 32, 32\)'):
        ResNetPiX(depth=50)(torch.randn(1, 1, 32, 32))
    with pytest.warns(DeprecationWarning):
        model = ResNetV1cPiX(depth=50, pretrained=str(tmp_path / 'x.pth'))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(tmp_path / 'x.pth'))
