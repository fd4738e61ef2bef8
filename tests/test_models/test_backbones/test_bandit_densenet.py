"""BanditDenseNet: arms of DenseNet-121, thin == masked steps, frozen inactive channels, the
saliency of one mask shared by all readers, the fixed eval topology, errors; and the Table 1
baseline rows (parameters, MACs) of the DenseNet-121 configs."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

from mmmod.models.backbones import BanditDenseNet

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
# 3 stages (two transitions), bn_size 2: conv1 8 wide, conv2 (growth) 4, 18 channels at the end
TINY = dict(arch=dict(growth_rate=4, depths=[2, 3, 2], init_channels=8), bn_size=2)


def _model(**kwargs):
    torch.manual_seed(0)
    model = BanditDenseNet(**{**TINY, **kwargs})
    for m in model.modules():  # random BN affine: every channel matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def _loss(model, x, y):
    return F.cross_entropy(model(x)[-1].mean((2, 3)), y)


@pytest.fixture(scope='module')
def data():
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4, ), generator=g))
            for _ in range(3)]


def test_arms_of_densenet121():
    """Every conv's outputs are arms (no residual add ties a width): the stem, 58 dense layers'
    conv1 (128) and conv2 (32), 3 transitions (128, 256, 512)."""
    model = BanditDenseNet(arch='121')
    arms = [(arm.site, arm.position, arm.width) for arm in model.arms]
    assert len(arms) == 1 + 2 * 58 + 3 and model.bandit.num_arms == 64 + 58 * 160 + 896 == 10240
    assert arms[:3] == [('stem', 'stem', 64), ('stages.0.block.0', 'conv1', 128),
                        ('stages.0.block.0', 'conv2', 32)]
    assert ('transitions.2', 'conv', 512) in arms
    # the stem is read by stage 1's 6 layers and its transition, each after its own BN-ReLU
    stem = model.arms[0]
    assert [offset for _, _, offset in stem.consumers] == [0] * 7
    assert all(norm is not None for _, norm, _ in stem.consumers)
    # layer 0's growth channels sit at channel 64 of the 5 later layers and the transition
    conv2 = model.arms[2]
    assert [offset for _, _, offset in conv2.consumers] == [64] * 6
    # the last block's layers are read by the final norm too (no conv)
    last = [a for a in model.arms if a.site == 'stages.3.block.15'][-1]
    assert last.consumers[-1][0] is None and last.consumers[-1][2] == 512 + 15 * 32
    assert model.stage_of('transitions.1') == model.stage_of('stages.1.block.3') == 'stage2'


@pytest.mark.parametrize('out_indices', [(2, ), (0, 1, 2)])
def test_thin_steps_equal_masked_steps(data, out_indices, bandit_steps):
    """Same losses, parameters, BN statistics and bandit state after three steps (the later ones
    selected from the earlier saliencies), in float64; stage outputs are equal too (full width,
    zeros at the inactive channels)."""
    masked = _model(execution='masked', ratio=0.4, out_indices=out_indices).double()
    thin = copy.deepcopy(masked)
    thin.execution = 'thin'
    data = [(x.double(), y) for x, y in data]
    losses = [bandit_steps(m, data, _loss, steps=3) for m in (masked, thin)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-9)
    assert len(set(losses[0])) == 3
    for (name, a), b in zip(masked.state_dict().items(), thin.state_dict().values()):
        if a.is_floating_point():  # relative to the tensor's scale
            assert (a - b).abs().max() <= 1e-9 * a.abs().max().clamp_min(1), name
        else:
            assert torch.equal(a, b), name
    assert int(thin.bandit.step) == 3 and thin.bandit.untried < thin.bandit.num_arms
    masks = masked.begin_bandit_step()
    thin.begin_bandit_step(masks)
    x = data[0][0]
    for a, b, in zip(masked(x), thin(x)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    site = 'transitions.0' if 0 in out_indices else 'transitions.1'
    if len(out_indices) > 1:  # an intermediate output: zeros at the transition's inactive
        inactive = ~masks[[(a.site, a.position) for a in thin.arms].index((site, 'conv'))]
        assert torch.all(thin(x)[0][:, inactive] == 0)


@pytest.mark.parametrize('execution', ['masked', 'thin'])
def test_inactive_channels_unchanged(data, execution, bandit_steps):
    """Filters, reader norm channels and conv columns of inactive channels keep their values;
    the active ones train."""
    model = _model(execution=execution, ratio=0.3)
    before = copy.deepcopy(model.state_dict())
    bandit_steps(model, data, _loss, steps=1)
    masks = model.bandit.split(model.bandit.counts > 0)  # the one step's selection
    frozen = model.frozen_entries(masks)
    tensors = dict(model.named_parameters(), **dict(model.named_buffers()))
    changed = checked = 0
    for name, tensor in model.state_dict().items():
        entry = frozen.get(id(tensors.get(name)))
        if entry is None:
            continue
        checked += 1
        mask = entry[1]
        assert torch.equal(tensor[mask], before[name][mask]), name
        changed += int(not torch.equal(tensor[~mask], before[name][~mask]))
    # every conv, every norm (weight, bias, running stats) has frozen entries
    assert checked == sum(1 for n in before if 'bandit' not in n and 'num_batches' not in n)
    assert changed > 0.8 * checked


def test_literal_masking_moves_inactive_weights(data, bandit_steps):
    model = _model(execution='masked', ratio=0.3, freeze_inactive=False)
    before = model.stages[0].block[0].conv1.weight.detach().clone()
    bandit_steps(model, data, _loss, steps=1)
    inactive = ~model.bandit.split(model.bandit.counts > 0)[1]  # stages.0.block.0 conv1
    assert inactive.any()
    assert not torch.equal(model.stages[0].block[0].conv1.weight[inactive], before[inactive])


def test_saliency_is_the_mask_gradient(data):
    """Eq. 2 with one mask m per arm, multiplied in after the BN-ReLU of each of its readers:
    the recorded saliency of an active channel equals dL/dm (autograd sums it over the
    readers). Thin execution records the same values, nothing at inactive channels."""
    masked = _model(execution='masked', ratio=0.5).double()
    thin = copy.deepcopy(masked)
    thin.execution = 'thin'
    x, y = data[0][0].double(), data[0][1]
    masks = masked.begin_bandit_step()
    leaves = {(a.site, a.position): m.double().requires_grad_()
              for a, m in zip(masked.arms, masks)}
    for site, sources in masked._layout.items():  # each reader: its sources' leaves, concatenated
        masked._steps[site].scale['input'] = torch.cat([leaves[(s, p)] for s, p, _ in sources])
    for (site, pos), leaf in leaves.items():
        if pos == 'conv1':  # read by its own layer's conv2 step
            masked._steps[site].scale[pos] = leaf
    F.cross_entropy(masked(x)[-1].mean((2, 3)), y).backward()  # one backward: hooks once
    thin.begin_bandit_step()
    F.cross_entropy(thin(x)[-1].mean((2, 3)), y).backward()
    readers = {len(r) for r in masked._readers}
    assert max(readers) == 4  # transitions.0: stage 2's 3 layers and transitions.1
    for i, (arm, active) in enumerate(zip(masked.arms, masks)):
        expected = leaves[(arm.site, arm.position)].grad
        torch.testing.assert_close(masked.step_saliencies()[i][active], expected[active])
        torch.testing.assert_close(thin.step_saliencies()[i], masked.step_saliencies()[i])
        assert torch.all(thin.step_saliencies()[i][~active] == 0)


def test_eval_runs_fixed_topology_and_state_in_checkpoint(data, bandit_steps):
    model = _model(ratio=0.4, out_indices=(0, 1, 2)).double()
    data = [(x.double(), y) for x, y in data]
    bandit_steps(model, data, _loss, steps=2)
    assert {'bandit.counts', 'bandit.means', 'bandit.step'} <= set(model.state_dict())
    model.eval()
    with torch.no_grad():
        out = model(data[0][0])
    fixed = model.fixed_masks()
    assert all(torch.equal(m, model._steps[a.site].masks[a.position].cpu())
               for a, m in zip(model.arms, fixed))
    masked = copy.deepcopy(model)
    masked.execution = 'masked'
    masked._fixed_at = None
    with torch.no_grad():
        for a, b in zip(masked(data[0][0]), out):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # the final output: zeros exactly at what the fixed topology removed of the last block
    final = model._steps['transitions.2'].masks['input']
    assert torch.all(out[-1][:, ~final] == 0) and out[-1][:, final].abs().sum() > 0


def test_training_forward_without_hook_is_refused(data):
    with pytest.raises(RuntimeError, match=r"custom_hooks=\[dict\(type='ChannelBanditHook'\)\]"):
        _model()(data[0][0])


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(execution='sparse'), ValueError, r"execution must be one of \['masked', 'thin'\]"),
    (dict(ratio=1.5), ValueError, r'ratio p must be in \(0, 1\]'),
    (dict(memory_efficient=True), ValueError, 'does not support memory_efficient=True'),
    (dict(init='greedy'), ValueError, 'init must be one of'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        BanditDenseNet(**{**TINY, **kwargs})


def test_thin_needs_batch_norm(data):
    model = _model(norm_cfg=dict(type='GN', num_groups=2))
    model.begin_bandit_step()
    with pytest.raises(TypeError, match="thin execution needs BatchNorm.*execution='masked'"):
        model(data[0][0])


# Table 1's baseline rows (Spasov & Lio): params to the paper's precision; MACs at 32x32 are
# checked exactly; the paper prints 0.59e8 / 0.6e8 "FLOPs" (multiply-adds, its tool [5])
DENSENET121_MACS_32 = 58_459_648  # the backbone at 32x32 (stem 16x16, stages 8, 4, 2, 1)
TABLE1 = {'densenet121_1xb64_cifar10.py': 6.96e6, 'densenet121_1xb64_cifar100.py': 7.05e6,
          'densenet121_1xb64_svhn.py': 6.96e6}


@pytest.mark.parametrize('name', sorted(TABLE1))
def test_baseline_configs_reproduce_table1(name):
    from mmmod.analysis.complexity import config_complexity
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'dce', name))
    result = config_complexity(cfg, shape=(32, 32), convention='mmengine')
    features = 6_953_856  # DenseNet-121 without its classifier (torchvision: 7,978,856 - 1,025,000)
    classes = cfg.model.head.num_classes
    assert result['params'] == features + 1024 * classes + classes
    # 7,056,356 with 100 classes: 7.06 M rounded; the paper prints 7.05 (truncated)
    assert int(result['params'] / 1e4) == round(TABLE1[name] / 1e4)
    # convs + FC (mmengine's FlopAnalyzer, 1 MAC = 1 multiply-add): 0.585e8 with 10 classes,
    # the paper's 0.59e8; 0.586e8 with 100 (the paper: 0.6e8)
    assert result['macs'] == DENSENET121_MACS_32 + 1024 * classes
