"""BanditResNet: arms, thin == masked steps, frozen inactive channels, saliencies, errors."""
import copy
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mmmod.models.backbones import BanditResNet

SMALL = dict(depth=50, stem_channels=16, base_channels=8, out_indices=(3, ))


def _model(**kwargs):
    torch.manual_seed(0)
    model = BanditResNet(**{**SMALL, **kwargs})
    for m in model.modules():  # random BN statistics and affine: every channel matters
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
            for _ in range(4)]


def test_arms_of_resnet50():
    model = BanditResNet(depth=50)
    arms = [(arm.site, arm.position) for arm in model.arms]
    assert arms[:4] == [('stem', 'stem'), ('layer1.0', 'conv1'), ('layer1.0', 'conv2'),
                        ('layer1.1', 'conv1')]
    assert len(arms) == 1 + 2 * 16 and model.bandit.num_arms == 7616
    tied = BanditResNet(depth=50, arm_tied=True)
    assert ('layer1.0', 'conv3') in [(a.site, a.position) for a in tied.arms]
    assert ('layer1.0', 'downsample') in [(a.site, a.position) for a in tied.arms]


def test_resnet18_stem_is_tied():
    """layer1.0 of ResNet-18 adds its input to the stream: the stem width is not free."""
    arms = [(a.site, a.position) for a in BanditResNet(depth=18).arms]
    assert ('stem', 'stem') not in arms and arms[0] == ('layer1.0', 'conv1')


@pytest.mark.parametrize('arm_tied', [False, True])
def test_thin_steps_equal_masked_steps(data, arm_tied, bandit_steps):
    """Same losses, parameters, BN statistics and bandit state after two steps (the second
    selected from the first's saliencies). In float64: BN over a batch of 4 at layer4's 1x1
    maps is ill-conditioned, and rounding differences grow ~100x per step."""
    masked = _model(execution='masked', arm_tied=arm_tied).double()
    thin = copy.deepcopy(masked)
    thin.execution = 'thin'
    data = [(x.double(), y) for x, y in data]
    losses = [bandit_steps(m, data, _loss, steps=2) for m in (masked, thin)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-9)
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
    assert frozen
    changed = 0
    for name, tensor in model.state_dict().items():
        tensors = {**dict(model.named_buffers()), **dict(model.named_parameters())}
        entry = frozen.get(id(tensors.get(name)))
        if entry is None:
            continue
        mask = entry[1]
        assert torch.equal(tensor[mask], before[name][mask]), name
        changed += int(not torch.equal(tensor[~mask], before[name][~mask]))
    assert changed > 0  # the active entries did train


def test_literal_masking_moves_inactive_weights(data, bandit_steps):
    model = _model(execution='masked', ratio=0.3, freeze_inactive=False)
    before = model.layer1[0].conv1.weight.detach().clone()
    bandit_steps(model, data, _loss, steps=1)
    inactive = ~model.bandit.split(model.bandit.counts > 0)[1]  # layer1.0 conv1
    assert not torch.equal(model.layer1[0].conv1.weight[inactive], before[inactive])


def test_saliency_is_the_mask_gradient(data):
    """Eq. 2 for an active channel k at a position t: sum(dL/dt_k * t_k) = dL/dm_k at m = 1,
    where the masked walk multiplies t by m. Checked for every arm of the step against
    autograd; thin execution records the same values."""
    masked = _model(execution='masked', ratio=0.5).double()
    thin = copy.deepcopy(masked)
    thin.execution = 'thin'
    x, y = data[0][0].double(), data[0][1]
    masks = masked.begin_bandit_step()
    scales = []
    for step in masked._steps.values():  # the masks as leaves of the graph
        for pos in step.scale:
            step.scale[pos] = step.scale[pos].clone().requires_grad_()
            scales.append(step.scale[pos])
    F.cross_entropy(masked(x)[-1].mean((2, 3)), y).backward()  # one backward: hooks once
    thin.begin_bandit_step()
    F.cross_entropy(thin(x)[-1].mean((2, 3)), y).backward()
    for arm, ((site, pos, *_), active) in enumerate(zip(masked.arms, masks)):
        expected = masked._steps[site].scale[pos].grad[active]
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
    assert all(torch.equal(a, b.cpu()) for a, b in zip(
        fixed, [model._steps[a.site].masks[a.position].cpu() for a in model.arms]))
    masked = copy.deepcopy(model)
    masked.execution = 'masked'
    masked._fixed_at = None
    with torch.no_grad():
        torch.testing.assert_close(masked(data[0][0])[-1], out, rtol=1e-9, atol=1e-9)


def test_training_forward_without_hook_is_refused(data):
    with pytest.raises(RuntimeError, match=r"custom_hooks=\[dict\(type='ChannelBanditHook'\)\]"):
        _model()(data[0][0])


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(execution='sparse'), ValueError, r"execution must be one of \['masked', 'thin'\]"),
    (dict(ratio=0), ValueError, r'ratio p must be in \(0, 1\]'),
    (dict(with_cp=True), ValueError, 'does not support with_cp'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        BanditResNet(**{**SMALL, **kwargs})


DIST_WORKER = '''
import json, sys
import torch, torch.distributed as dist
import torch.nn.functional as F
from mmmod.engine.hooks.channel_bandit_hook import summed_over_ranks
from mmmod.models.backbones import BanditResNet

rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
torch.manual_seed(0)  # the same model on both ranks
model = BanditResNet(depth=50, stem_channels=16, base_channels=8, out_indices=(3, ), ratio=0.3)
g = torch.Generator().manual_seed(100 + rank)  # each rank its own half of the batch
selected = []
for _ in range(4):
    masks = model.begin_bandit_step()
    selected.append(torch.cat(masks).nonzero().flatten().tolist())
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.randint(0, 10, (2, ), generator=g)
    F.cross_entropy(model(x)[-1].mean((2, 3)), y).backward()
    model.end_bandit_step(summed_over_ranks(model.step_saliencies()))
json.dump(dict(selected=selected, means=model.bandit.means.tolist()), open(out, 'w'))
dist.destroy_process_group()
'''


def test_two_ranks_select_identically(tmp_path):
    """2 gloo processes with different halves of the batch: the same channels every step."""
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(('127.0.0.1', 0))
        port = str(sock.getsockname()[1])
    script = tmp_path / 'worker.py'
    script.write_text(DIST_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), port,
                               str(tmp_path / f'rank{rank}.json')], env=env)
             for rank in range(2)]
    assert [p.wait(timeout=1800) for p in procs] == [0, 0]  # bounds a hang only
    results = [json.load(open(tmp_path / f'rank{rank}.json')) for rank in range(2)]
    assert results[0]['selected'] == results[1]['selected']
    assert results[0]['means'] == results[1]['means']
    assert len({tuple(s) for s in results[0]['selected']}) > 1  # the selection moved
