import pytest
import torch
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm
from mmpretrain.models.backbones import ResNet

from mmmod.models import MoDBlock, ResNetMoD, ResNetV1cMoD

# depth -> (blocks per stage, bottleneck?) from the CNN-MoD paper's appendix Table 5
TABLE5 = {18: ((2, 2, 2, 2), False), 26: ((2, 2, 3, 4), False), 34: ((3, 4, 6, 3), False),
          42: ((3, 3, 6, 6), False), 50: ((3, 4, 6, 3), True), 75: ((3, 4, 14, 3), True),
          86: ((3, 4, 18, 3), True), 101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}


def stage_kinds(model):
    return [['mod' if isinstance(b, MoDBlock) else 'std' for b in getattr(model, f'layer{i}')]
            for i in range(1, 5)]


@pytest.mark.parametrize('depth', sorted(TABLE5))
def test_depths_follow_table5_and_alternate(depth):
    blocks, bottleneck = TABLE5[depth]
    model = ResNetMoD(depth=depth)
    kinds = stage_kinds(model)
    assert [len(s) for s in kinds] == list(blocks)
    for stage in kinds:
        assert stage == ['mod' if i % 2 else 'std' for i in range(len(stage))]
    block_type = model.layer1[0].__class__.__name__
    assert block_type == ('Bottleneck' if bottleneck else 'BasicBlock')


@pytest.mark.parametrize('depth,stage,k,mid', [(50, 1, 4, 1), (50, 2, 8, 2), (50, 3, 16, 4),
                                               (50, 4, 32, 8), (18, 1, 1, 1), (34, 3, 4, 4)])
def test_k_is_floor_c_over_64(depth, stage, k, mid):
    model = ResNetMoD(depth=depth)
    block = getattr(model, f'layer{stage}')[1]
    assert isinstance(block, MoDBlock) and block.k == k
    convs = [m.conv for m in block.branch]
    assert convs[0].in_channels == k and convs[-1].out_channels == k
    assert convs[0].out_channels == mid  # bottleneck k -> k/4 -> k, basic k -> k -> k
    assert block.branch[-1].with_activation is False  # no activation after the last norm
    hidden = block.selector.fc1.out_features
    assert hidden == block.channels // 16


@pytest.mark.parametrize('depth,out_channels', [(18, (64, 128, 256, 512)),
                                                (50, (256, 512, 1024, 2048))])
def test_outputs(depth, out_channels):
    model = ResNetMoD(depth=depth, out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, c, 64 // s, 64 // s)
                                              for c, s in zip(out_channels, (4, 8, 16, 32))]


def test_standard_parts_keep_mmpretrain_names_and_load_upstream_weights():
    torch.manual_seed(0)
    upstream = ResNet(depth=50)
    model = ResNetMoD(depth=50)
    up_sd, sd = upstream.state_dict(), model.state_dict()
    shared = [k for k in up_sd if k in sd]
    # everything of upstream except the replaced blocks (layerX.1, layerX.3, ...) is present
    replaced = {f'layer{s}.{b}' for s, n in enumerate((3, 4, 6, 3), 1) for b in range(1, n, 2)}
    missing = [k for k in up_sd if k not in sd]
    assert missing and all('.'.join(k.split('.')[:2]) in replaced for k in missing)
    assert all(up_sd[k].shape == sd[k].shape for k in shared)
    result = model.load_state_dict(up_sd, strict=False)
    assert set(result.unexpected_keys) == set(missing)
    assert all('.'.join(k.split('.')[:2]) in replaced for k in result.missing_keys)
    for k in shared:
        assert torch.equal(model.state_dict()[k], up_sd[k])


def test_frozen_stages_and_norm_eval():
    model = ResNetMoD(depth=18, frozen_stages=1, norm_eval=True)
    model.train()
    for p in list(model.conv1.parameters()) + list(model.layer1.parameters()):
        assert not p.requires_grad
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert not model.layer1.training and not model.norm1.training
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))


def test_zero_init_residual_covers_mod_branches():
    model = ResNetMoD(depth=50)
    model.init_weights()
    for m in model.modules():
        if isinstance(m, MoDBlock):
            assert m.branch[-1].norm.weight.abs().sum() == 0
    model = ResNetMoD(depth=50, zero_init_residual=False)
    model.init_weights()
    assert model.layer3[1].branch[-1].norm.weight.abs().sum() > 0


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    # zero_init_residual=False: with zero-initialised last norms no gradient reaches the
    # selectors on the first step, by design.
    model = ResNetMoD(depth=26, zero_init_residual=False, out_indices=(0, 1, 2, 3))
    model.init_weights()
    model.train()
    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any('selector' in n for n, _ in model.named_parameters())


def test_mmseg_fcn_setting_deep_stem_dilation_contract():
    model = ResNetV1cMoD(depth=50, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                         strides=(1, 2, 1, 1), contract_dilation=True, norm_eval=False,
                         style='pytorch').eval()
    assert hasattr(model, 'stem') and not hasattr(model, 'conv1')
    assert model.layer3[0].conv2.dilation == (1, 1)  # contracted: 2 // 2
    assert model.layer3[2].conv2.dilation == (2, 2)
    assert model.layer3[1].branch[1].conv.dilation == (2, 2)  # MoD uses the stage's dilation
    assert model.layer4[0].conv2.dilation == (2, 2) and model.layer4[1].branch[1].conv.dilation \
        == (4, 4)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [16, 8, 8, 8]  # output stride 8
    names = set(model.state_dict())
    assert 'stem.0.conv.weight' in names and 'stem.0.bn.weight' in names


def test_mmdet_faster_rcnn_setting_caffe_style():
    model = ResNetMoD(depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                      norm_eval=True, style='caffe')
    assert model.layer2[0].conv1.stride == (2, 2)  # caffe: stride in the 1x1
    model.train()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert len(outs) == 4 and outs[-1].shape == (1, 2048, 2, 3)


@pytest.mark.parametrize('pattern,expected', [
    ('all', [['std'] + ['mod'] * (n - 1) for n in (2, 2, 2, 2)]),
    ('none', [['std'] * n for n in (2, 2, 2, 2)]),
    ([[0, 1], [0, 0], [0, 1], [0, 0]], [['std', 'mod'], ['std', 'std'], ['std', 'mod'],
                                        ['std', 'std']]),
])
def test_mod_patterns(pattern, expected):
    assert stage_kinds(ResNetMoD(depth=18, mod_pattern=pattern)) == expected


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(depth=51), KeyError, r'invalid depth 51 for ResNetMoD; choose from \[18, 26, 34, 42, '
     r'50, 75, 86, 101, 152\]'),
    (dict(depth=50, channel_reduction=0), ValueError, 'integer >= 1'),
    (dict(depth=50, fusion='middle'), ValueError, r"\['first', 'last', 'original'\]"),
    (dict(depth=50, selection='best'), ValueError, r"\['topk', 'random'\]"),
    (dict(depth=50, mod_pattern='every-third'), ValueError, r"\['alternate', 'all', 'none'\]"),
    (dict(depth=18, mod_pattern=[[0, 1]] * 3), ValueError, r'lengths \[2, 2, 2, 2\]'),
    (dict(depth=18, mod_pattern=[[1, 0]] * 4), ValueError, 'block 0 of a stage cannot'),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ResNetMoD(**kwargs)


def test_input_channel_mismatch():
    with pytest.raises(ValueError, match=r'expects \(N, 3, H, W\) input, got \(1, 1, 32, 32\)'):
        ResNetMoD(depth=18)(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize('fusion,selection', [('last', 'topk'), ('original', 'topk'),
                                              ('first', 'random')])
def test_variants_build_and_run(fusion, selection):
    model = ResNetMoD(depth=50, fusion=fusion, selection=selection).eval()
    blocks = [m for m in model.modules() if isinstance(m, MoDBlock)]
    assert blocks and all(b.fusion == fusion and b.selection == selection for b in blocks)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))[-1].shape == (1, 2048, 2, 2)


def test_pretrained_kwarg_becomes_init_cfg(tmp_path):
    ckpt = tmp_path / 'r18.pth'
    torch.save(dict(state_dict=ResNet(depth=18).state_dict()), ckpt)
    with pytest.warns(DeprecationWarning):
        model = ResNetMoD(depth=18, pretrained=str(ckpt))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(ckpt))
    with pytest.raises(ValueError, match='either pretrained or init_cfg'):
        ResNetMoD(depth=18, pretrained=str(ckpt), init_cfg=dict(type='Pretrained', checkpoint='x'))
