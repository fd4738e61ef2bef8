"""BanditVGG: arms, thin == masked steps, frozen inactive channels, saliencies, eval, errors;
the baseline configs against Table 1's VGG-19 rows."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

from mmmod.analysis.complexity import complexity, model_from_config

from mmmod.models.backbones import BanditVGG

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
BN = dict(type='BN')
# 3 of VGG-13's stages (64, 64 | 128, 128 | 256, 256): 6 chained layers at VGG's own widths
SMALL = dict(depth=13, num_stages=3, dilations=(1, 1, 1), out_indices=(2, ), norm_cfg=BN,
             conv_cfg=dict(type='BiasFreeConv2d'))


def _model(**kwargs):
    torch.manual_seed(0)
    model = BanditVGG(**{**SMALL, **kwargs})
    for m in model.modules():  # random BN affine: every channel matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def _loss(model, x, y):
    return F.cross_entropy(model(x)[-1].mean((2, 3))[:, :10], y)


@pytest.fixture(scope='module')
def data():
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4, ), generator=g))
            for _ in range(3)]


def test_arms_of_vgg19():
    """Every conv's outputs: 16 layers, 5,504 arms; 20% is the paper's 1,100 channels."""
    model = BanditVGG(depth=19, ratio=0.2, norm_cfg=BN)
    assert [a.site for a in model.arms] == [name for name, _ in model.chain_layers()]
    assert len(model.arms) == 16 and model.bandit.num_arms == 5504
    assert model.bandit.num_active == 1100
    assert [a.width for a in model.arms] == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    assert all(a.position == 'output' for a in model.arms)
    # consumers: the next conv's input columns; the last layer's reader is the head
    layers = [layer for _, layer in model.chain_layers()]
    assert [a.consumers[0][0] for a in model.arms[:-1]] == [m.conv for m in layers[1:]]
    assert model.arms[-1].consumers == ()
    # features: [conv, conv, pool] [conv, conv, pool] [conv x 4, pool] ...: the log's stages
    assert model.arms[-1].site == 'features.19'
    assert [model.stage_of(a.site) for a in model.arms] == \
        ['stage1'] * 2 + ['stage2'] * 2 + ['stage3'] * 4 + ['stage4'] * 4 + ['stage5'] * 4
    # state-dict names are upstream VGG's
    assert 'features.0.conv.weight' in model.state_dict()


def test_thin_steps_hand_slim_tensors_on():
    """Thin execution: each layer computes its active channels only, from the previous
    layer's active ones; the output is VGG's full width with zeros at inactive channels."""
    model = _model(ratio=0.3)
    masks = model.begin_bandit_step()
    seen = []
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.append((i[0].shape[1],
                                                                      o.shape[1])))
             for _, layer in model.chain_layers()]
    out = model(torch.rand(2, 3, 16, 16))[-1]
    for h in hooks:
        h.remove()
    counts = [int(m.sum()) for m in masks]
    assert seen == list(zip([3] + counts[:-1], counts))
    assert out.shape == (2, 256, 2, 2)
    assert torch.all(out[:, ~masks[-1]] == 0)


def test_thin_steps_equal_masked_steps(data, bandit_steps):
    """Same losses, parameters, BN statistics and bandit state after three steps (each
    selected from the previous ones' saliencies), in float64."""
    masked = _model(execution='masked', ratio=0.4).double()
    thin = copy.deepcopy(masked)
    thin.execution = 'thin'
    data = [(x.double(), y) for x, y in data]
    losses = [bandit_steps(m, data, _loss, steps=3) for m in (masked, thin)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-9)
    assert int(thin.bandit.step) == 3
    for (name, a), b in zip(masked.state_dict().items(), thin.state_dict().values()):
        if a.is_floating_point():  # relative to the tensor's scale
            assert (a - b).abs().max() <= 1e-7 * a.abs().max(), name
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize('execution', ['masked', 'thin'])
def test_inactive_channels_unchanged(data, execution, bandit_steps):
    model = _model(execution=execution, ratio=0.3)
    before = copy.deepcopy(model.state_dict())
    bandit_steps(model, data, _loss, steps=1)
    masks = model.bandit.split(model.bandit.counts > 0)  # the one step's selection
    frozen = model.frozen_entries(masks)
    tensors = dict(model.named_parameters(), **dict(model.named_buffers()))
    checked = changed = 0
    for name, tensor in model.state_dict().items():
        entry = frozen.get(id(tensors.get(name)))
        if entry is None:
            continue
        mask = entry[1]
        assert torch.equal(tensor[mask], before[name][mask]), name
        checked += 1
        changed += int(not torch.equal(tensor[~mask], before[name][~mask]))
    # 6 convs (rows, and 5 of them columns), 6 norms x 4 tensors
    assert checked == 6 + 6 * 4 and changed > 0  # the active entries did train


def test_saliency_is_the_mask_gradient(data):
    """Eq. 2 for an active channel k of a layer's output t: sum(dL/dt_k * t_k) = dL/dm_k at
    m = 1, where the masked walk multiplies t by m; thin execution records the same."""
    masked = _model(execution='masked', ratio=0.5).double()
    thin = copy.deepcopy(masked)
    thin.execution = 'thin'
    x, y = data[0][0].double(), data[0][1]
    masks = masked.begin_bandit_step()
    for step in masked._steps.values():  # the masks as leaves of the graph
        step.scale['output'] = step.scale['output'].clone().requires_grad_()
    _loss(masked, x, y).backward()  # one backward: hooks once
    thin.begin_bandit_step()
    _loss(thin, x, y).backward()
    for arm, (site_arm, active) in enumerate(zip(masked.arms, masks)):
        expected = masked._steps[site_arm.site].scale['output'].grad[active]
        torch.testing.assert_close(masked.step_saliencies()[arm][active], expected.double())
        torch.testing.assert_close(thin.step_saliencies()[arm], masked.step_saliencies()[arm])
        assert torch.all(thin.step_saliencies()[arm][~active] == 0)


def test_eval_runs_fixed_topology_and_state_in_checkpoint(data, bandit_steps):
    model = _model(ratio=0.4).double()
    data = [(x.double(), y) for x, y in data]
    bandit_steps(model, data, _loss, steps=2)
    assert {'bandit.counts', 'bandit.means', 'bandit.step'} <= set(model.state_dict())
    model.eval()
    with torch.no_grad():
        out = model(data[0][0])[-1]
    fixed = model.fixed_masks()
    assert all(torch.equal(a, model._steps[arm.site].masks['output'].cpu())
               for a, arm in zip(fixed, model.arms))
    assert torch.all(out[:, ~fixed[-1]] == 0)
    masked = copy.deepcopy(model)
    masked.execution = 'masked'
    masked._fixed_at = None
    with torch.no_grad():
        torch.testing.assert_close(masked(data[0][0])[-1], out, rtol=1e-9, atol=1e-9)
    # eval observes nothing
    assert int(model.bandit.step) == 2 and model._steps['features.0'].saliency is None


def test_training_forward_without_hook_is_refused(data):
    with pytest.raises(RuntimeError, match=r"custom_hooks=\[dict\(type='ChannelBanditHook'\)\]"):
        _model()(data[0][0])


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(execution='sparse'), ValueError, r"execution must be one of \['masked', 'thin'\]"),
    (dict(ratio=0), ValueError, r'ratio p must be in \(0, 1\]'),
    (dict(ratio=1.5), ValueError, r'ratio p must be in \(0, 1\]'),
    (dict(norm_cfg=None), ValueError, r"needs conv -> norm -> act layers \(norm_cfg="),
    (dict(num_classes=10), ValueError, 'takes num_classes=-1'),
    # VGG has no with_cp (nothing is checkpointed): refused as any unknown argument
    (dict(with_cp=True), TypeError, "unexpected keyword argument 'with_cp'"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        BanditVGG(**{**SMALL, **kwargs})


# Table 1's VGG-19 baselines: (config, our parameters, the paper's in M, its decimals, our
# MACs at 32x32). The paper's 3.98e8 "FLOPs" (4e8 for CIFAR-100) are multiply-adds of the
# convs: 398,131,200 = 3.98e8; mmengine's count adds BN (606,208), the pooling (512) and the
# FC (5,120 / 51,200): 3.987e8 / 3.988e8.
TABLE1 = [
    ('configs/dce/vgg19bn_1xb64_cifar10.py', 20_035_018, 20.035, 3, 398_743_040),
    ('configs/dce/vgg19bn_1xb64_cifar100.py', 20_081_188, 20.08, 2, 398_789_120),
    ('configs/dce/vgg19bn_1xb64_svhn.py', 20_035_018, 20.035, 3, 398_743_040),
]


@pytest.mark.parametrize('config, params, paper, decimals, macs', TABLE1)
def test_baseline_configs_reproduce_table1(config, params, paper, decimals, macs):
    model = model_from_config(Config.fromfile(osp.join(REPO, config)))
    count = sum(p.numel() for p in model.parameters())
    assert count == params and round(count / 1e6, decimals) == paper
    # upstream's VGG keeps a bias in every conv before BN: 5,504 more than the paper counts
    assert not any(name.endswith('conv.bias') for name, _ in model.named_parameters())
    result = complexity(model, (32, 32), convention='mmengine')
    assert result['macs'] == macs and result['by_operator']['conv'] == 398_131_200
    assert round(result['by_operator']['conv'] / 1e8, 2) == 3.98


def test_bandit_config_trains_the_baseline_network():
    """The p40 config's BanditVGG holds the baseline's parameters (and the bandit's buffers)."""
    model = model_from_config(Config.fromfile(osp.join(
        REPO, 'configs/dce/vgg19bn-dce-p40_1xb64_cifar10.py')))
    assert sum(p.numel() for p in model.parameters()) == 20_035_018
    assert model.backbone.bandit.num_active == int(0.4 * 5504)
