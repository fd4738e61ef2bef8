"""Pick-or-Mix: the fast operator against the PyTorch reference (values, gradients, ties), the
gradient rules of the authors' code checked by hand, and the module's contract."""
import pytest
import torch
from torch.testing import assert_close

import mmmod.models.layers.pix as pix_module
from mmmod.models.layers import PiX, pick_or_mix, pix_groups, pix_reference
from mmmod.models.layers.pix import pix_naive

# (C, zeta): divisible, a short last group, zeta = 1, one group, zeta > 256 (int32 arg-max)
SHAPES = [(12, 4), (10, 4), (9, 2), (8, 1), (5, 8), (300, 257)]
MODES = ('pix', 'avg', 'max')


def tied_inputs(c, zeta, n=3, hw=(4, 5), seed=0):
    """Small-integer x (many ties inside groups) and p on both sides of tau = 0.5, with one p
    exactly 0.5 (Avg: the switch is ``p < tau``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, c, *hw), generator=g).double()
    p = torch.rand(n, pix_groups(c, zeta), generator=g, dtype=torch.double)
    p[0, 0] = 0.5
    return x, p


def run(fn, x, p, zeta, mode, grad):
    x, p = x.clone().requires_grad_(), p.clone().requires_grad_()
    y = fn(x, p, zeta, 0.5, mode)
    (y * grad).sum().backward()
    return y, x.grad, p.grad


@pytest.mark.parametrize('c,zeta', SHAPES)
@pytest.mark.parametrize('mode', MODES)
def test_fast_op_matches_reference_on_ties(c, zeta, mode):
    x, p = tied_inputs(c, zeta)
    grad = torch.randn(x.shape[0], p.shape[1], *x.shape[2:], dtype=torch.double)
    fast, ref = run(pick_or_mix, x, p, zeta, mode, grad), run(pix_reference, x, p, zeta, mode, grad)
    for a, b, what in zip(fast, ref, ('y', 'grad x', 'grad p')):
        assert_close(a, b, msg=what)
    with torch.no_grad():  # the direct (no autograd) call gives the same values
        assert_close(pick_or_mix(x, p, zeta, 0.5, mode), ref[0])
    assert_close(pix_naive(x, p, zeta, 0.5, mode), ref[0])  # the benchmark's baseline too


def test_float32_matches_reference():
    torch.manual_seed(0)
    x, p = torch.rand(2, 64, 7, 9), torch.rand(2, 16)
    grad = torch.randn(2, 16, 7, 9)
    fast, ref = (run(fn, x, p, 4, 'pix', grad) for fn in (pick_or_mix, pix_reference))
    for a, b in zip(fast, ref):
        assert_close(a, b)


@pytest.mark.parametrize('fn', [pick_or_mix, pix_reference], ids=['fast', 'reference'])
@pytest.mark.parametrize('c,zeta,mode', [(10, 4, 'pix'), (10, 4, 'max'), (6, 3, 'avg'),
                                         (4, 1, 'pix')])
def test_gradcheck(fn, c, zeta, mode):
    torch.manual_seed(0)
    x = torch.randn(2, c, 3, 3, dtype=torch.double, requires_grad=True)  # no ties
    # p away from tau so the finite differences do not flip the switch
    p = torch.cat([torch.rand(2, 1) * 0.4, 0.6 + torch.rand(2, pix_groups(c, zeta) - 1) * 0.4],
                  1).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, zeta, 0.5, mode), (x, p))


def test_gradient_rules_by_hand():
    """The authors' backward: Max sends p * g to the (first) arg-max channel only, Avg sends
    p * g / zeta to every channel, p gets the reduced value times g summed over space."""
    # one sample, C = 5, zeta = 2 -> groups {0, 1}, {2, 3}, {4}; two pixels
    x = torch.tensor([[1., 4.], [3., 4.],    # group 0: max at ch1 / tie at px1 -> ch0
                      [2., 0.], [6., 1.],    # group 1
                      [5., 7.]]).view(1, 5, 1, 2)
    p = torch.tensor([[0.2, 0.9, 0.4]])  # Max, Avg, Max
    g = torch.tensor([[10., 20.], [30., 40.], [50., 60.]]).view(1, 3, 1, 2)
    for fn in (pick_or_mix, pix_reference):
        xr, pr = x.clone().requires_grad_(), p.clone().requires_grad_()
        y = fn(xr, pr, 2)
        assert_close(y.flatten(), torch.tensor([.2 * 3, .2 * 4, .9 * (2 + 6) / 2, .9 * (0 + 1) / 2,
                                                .4 * 5, .4 * 7]))
        (y * g).sum().backward()
        expected_x = torch.tensor([[0., .2 * 20], [.2 * 10, 0.],
                                   [.9 * 30 / 2, .9 * 40 / 2], [.9 * 30 / 2, .9 * 40 / 2],
                                   [.4 * 50, .4 * 60]]).view(1, 5, 1, 2)
        assert_close(xr.grad, expected_x)
        # the short last group's Avg would also divide by zeta; here it picks (Max)
        expected_p = torch.tensor([[3 * 10 + 4 * 20, 8 / 2 * 30 + 1 / 2 * 40, 5 * 50 + 7 * 60]])
        assert_close(pr.grad, expected_p)


def test_short_group_avg_divides_by_zeta():
    x = torch.ones(1, 5, 1, 1)  # groups of zeta = 4: {0..3}, {4}
    y = pick_or_mix(x, torch.tensor([[0.9, 0.9]]), zeta=4)
    assert_close(y.flatten(), torch.tensor([0.9, 0.9 / 4]))


def test_backward_saves_uint8_argmax_not_the_input():
    x = torch.rand(2, 16, 5, 5, requires_grad=True)
    p = torch.rand(2, 4, requires_grad=True)
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pick_or_mix(x, p, zeta=4)
    assert saved and (tuple(x.shape), x.dtype) not in saved
    assert ((2, 4, 5, 5), torch.uint8) in saved


def test_fallback_without_compiled_op(monkeypatch):
    torch.manual_seed(0)
    x, p = torch.rand(1, 8, 3, 3), torch.rand(1, 2)
    expected = pick_or_mix(x, p, zeta=4)
    monkeypatch.setattr(pix_module, '_fast_op_available', lambda x: False)
    assert_close(pick_or_mix(x, p, zeta=4), expected)
    xr = x.clone().requires_grad_()
    pick_or_mix(xr, p, zeta=4).sum().backward()
    assert xr.grad is not None


def test_module_shapes_params_and_zeta1_gate():
    torch.manual_seed(0)
    m = PiX(10, zeta=4)
    assert m.out_channels == 3 and m.scorer.fc1.weight.shape == (3, 10)
    assert sum(t.numel() for t in m.parameters()) == 30  # FC without bias, nothing else
    x = torch.rand(2, 10, 6, 6)
    assert m(x).shape == (2, 3, 6, 6)
    gate = PiX(8, zeta=1)  # Max = Avg = the channel: a per-channel gate
    x = torch.rand(2, 8, 4, 4)
    p = torch.sigmoid(x.mean((2, 3)) @ gate.scorer.fc1.weight.t())
    assert_close(gate(x), x * p[:, :, None, None])


@pytest.mark.parametrize('mode', MODES)
def test_module_trace_follows_new_inputs(mode):
    torch.manual_seed(0)
    m = PiX(16, zeta=4, mode=mode).eval()
    with torch.no_grad():
        traced = torch.jit.trace(m, torch.rand(1, 16, 5, 5))
        x = torch.rand(2, 16, 7, 3)
        assert_close(traced(x), m(x))


@pytest.mark.parametrize('kwargs,match', [
    (dict(zeta=0), 'zeta must be an integer >= 1, got 0'),
    (dict(zeta=1.5), 'zeta must be an integer >= 1, got 1.5'),
    (dict(zeta=True), 'zeta must be an integer >= 1'),
    (dict(zeta=4, tau=0), r'tau must be a number in \(0, 1\), got 0'),
    (dict(zeta=4, tau=1.0), r'tau must be a number in \(0, 1\)'),
    (dict(zeta=4, mode='min'), r"mode must be one of \['pix', 'avg', 'max'\], got 'min'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PiX(16, **kwargs)
    with pytest.raises(ValueError, match=match):
        pick_or_mix(torch.rand(1, 16, 2, 2), torch.rand(1, 4), **{'tau': 0.5, **kwargs})


def test_bad_shapes():
    with pytest.raises(ValueError, match=r'p must be \(N, ceil\(C / zeta\)\) = \(1, 3\)'):
        pix_reference(torch.rand(1, 10, 2, 2), torch.rand(1, 2), zeta=4)
    with pytest.raises(RuntimeError, match=r'p must be \(N, ceil\(C / zeta\)\)'):
        pick_or_mix(torch.rand(1, 10, 2, 2), torch.rand(1, 2), zeta=4)
    with pytest.raises(ValueError, match=r'expects \(N, 16, H, W\)'):
        PiX(16, zeta=4)(torch.rand(1, 8, 2, 2))


def _module_reference(module, x):
    """PiX written out: sigmoid(FC(mean)) then the reference sampling."""
    p = torch.sigmoid(torch.nn.functional.linear(x.mean((2, 3)), module.scorer.fc1.weight))
    return pix_reference(x, p, module.zeta, module.tau, module.mode)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('batch', [1, 3])
def test_inference_plan_matches_the_module_written_out(mode, batch):
    torch.manual_seed(0)
    module = PiX(40, zeta=3, mode=mode).eval()
    x = torch.rand(batch, 40, 9, 11)
    with torch.no_grad():
        out = module(x)
        assert_close(out, _module_reference(module, x), rtol=1e-5, atol=1e-6)
        # the compiled plan ran (where a compiler is)
        from mmmod.ops import cpp_module
        assert (module._plan is not None) == (cpp_module('pix') is not None)
    assert_close(module(x), out, rtol=1e-5, atol=1e-6)  # autograd path: the same values


def test_inference_plan_honours_hooks_replaced_weights_and_copies():
    import copy
    import pickle
    torch.manual_seed(0)
    module = PiX(32, zeta=4).eval()
    x = torch.rand(2, 32, 5, 5)
    with torch.no_grad():
        module(x)  # builds the plan
        module.scorer.fc1.weight = torch.nn.Parameter(torch.randn(8, 32))
        assert_close(module(x), _module_reference(module, x), rtol=1e-5, atol=1e-6)
        for other in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
            assert_close(other(x), module(x))
        seen = []
        module.scorer.register_forward_hook(lambda m, i, o: seen.append(o))
        assert_close(module(x), _module_reference(module, x), rtol=1e-5, atol=1e-6)
        assert len(seen) == 1, 'a hooked scorer is called as a module'
        module.double()
        xd = x.double()
        assert_close(module(xd), _module_reference(module, xd))
