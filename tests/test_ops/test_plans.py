"""The compiled inference plans' invalidation (``mmmod/ops/csrc/module_watch.h``): a plan runs
only while the registration dicts it was built from hold the same objects."""
import pytest
import torch
import torch.nn as nn

from mmmod.models.layers import PiX
from mmmod.ops import cpp_module


@pytest.fixture
def mod_ops():
    ops = cpp_module('mod')
    if ops is None:
        pytest.skip('the mmmod_mod C++ operator could not be compiled here')
    return ops


def watched(module):
    return [d for m in module.modules() for d in (m._modules, m._parameters, m._buffers)]


def test_a_watching_plan_answers_false_once_anything_is_replaced(mod_ops):
    x = torch.rand(1, 4, 2, 2)
    edits = [
        lambda m: setattr(m, 'weight', nn.Parameter(m.weight.detach().clone())),  # same key
        lambda m: setattr(m, 'bias', nn.Parameter(torch.zeros(4))),  # None -> a Parameter
        lambda m: m.register_buffer('extra', torch.zeros(1)),  # a new key
        lambda m: setattr(m, 'running_mean', torch.zeros(4)),  # a buffer replaced
        lambda m: m._buffers.pop('running_var'),  # a key removed
        lambda m: m._buffers.update(running_var=m._buffers.pop('running_var')),  # reordered
    ]
    for edit in edits:
        norm = nn.BatchNorm2d(4)
        plan = mod_ops.Plan(watched(norm))
        assert plan(x, None) is None, 'unchanged: a watching plan leaves the call to the module'
        with torch.no_grad():
            norm.weight.mul_(2)  # contents are not watched: the plans read them on every call
        norm.eps = 0.5  # nor are plain attributes
        assert plan(x, None) is None
        edit(norm)
        assert plan(x, None) is False


def test_a_watching_plan_sees_replaced_submodules_at_any_depth(mod_ops):
    x = torch.rand(1, 4, 2, 2)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()), nn.Identity())
    plan = mod_ops.Plan(watched(model))
    model[0][0].register_forward_hook(lambda *_: None)  # hooks are no registration
    assert plan(x, None) is None
    model[0][1] = nn.ReLU6()
    assert plan(x, None) is False
    plan = mod_ops.Plan(watched(model))
    model[0][0].weight = nn.Parameter(torch.zeros(4, 4, 1, 1))
    assert plan(x, None) is False


def test_pix_plan_follows_a_replaced_scorer():
    if cpp_module('pix') is None:
        pytest.skip('the mmmod_pix C++ operator could not be compiled here')
    torch.manual_seed(0)
    module = PiX(16, zeta=4).eval()
    x = torch.rand(1, 16, 3, 3)
    with torch.no_grad():
        module(x)  # builds the plan
        plan = module._plan
        assert plan(x) is not None and plan(x) is not False, 'the plan ran'
        module.scorer = PiX(16, zeta=4).scorer  # another scorer module, other weights
        assert plan(x) is False
        p = torch.sigmoid(module.scorer.fc1.weight @ x.mean((2, 3))[0])  # (G,)
        out = module(x)
        assert module._plan is not plan, 'a new plan was built'
    from mmmod.models.layers.pix import pix_reference
    torch.testing.assert_close(out, pix_reference(x, p[None], 4, module.tau, module.mode),
                               rtol=1e-5, atol=1e-6)
