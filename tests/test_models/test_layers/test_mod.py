import json
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks import DropPath

import mmmod
import mmmod.models.layers.mod as mod_module
from mmmod.models.layers import (ChannelScorer, MoDBlock, gather_channels, num_selected_channels,
                                 record_selections, top_channels)
from mmmod.ops import cpp_module


def make_branch(k, dilation=1):
    """A bottleneck-like slim branch k -> k/4 -> k ending in a BN."""
    mid = max(1, k // 4)
    bn = dict(type='BN')
    return nn.Sequential(
        ConvModule(k, mid, 1, norm_cfg=bn),
        ConvModule(mid, mid, 3, padding=dilation, dilation=dilation, norm_cfg=bn),
        ConvModule(mid, k, 1, norm_cfg=bn, act_cfg=None))


def make_inverted_branch(k, t=6):
    """A MobileNetV2-like slim branch k -> t*k (dw 3x3) -> k ending in a BN."""
    bn, act = dict(type='BN'), dict(type='ReLU6')
    return nn.Sequential(
        ConvModule(k, t * k, 1, norm_cfg=bn, act_cfg=act),  # pw
        ConvModule(t * k, t * k, 3, padding=1, groups=t * k, norm_cfg=bn, act_cfg=act),  # dw
        ConvModule(t * k, k, 1, norm_cfg=bn, act_cfg=None))  # pw-linear


BRANCHES = dict(bottleneck=make_branch, inverted=make_inverted_branch)


def randomize_bn(module, seed=0):
    """Non-trivial BN statistics and affine params, so folding errors would show."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


def reference_mod(block, x):
    """The paper's MoD block written out plainly (Sec. 3, Eq. 1), per sample."""
    c, k = block.channels, block.k
    s = torch.sigmoid(F.linear(F.relu(F.linear(x.mean((2, 3)), block.selector.fc1.weight)),
                               block.selector.fc2.weight))  # (N, C)
    out = x.clone()
    for n in range(x.shape[0]):
        # descending, ties to the lower channel (stable sort)
        scores, idx = [t[:k] for t in s[n].sort(descending=True, stable=True)]
        y = block.branch(x[n:n + 1, idx])[0] * scores[:, None, None]  # (k, H, W)
        if block.fusion == 'first':
            out[n, :k] += y
        elif block.fusion == 'last':
            out[n, c - k:] += y
        else:
            out[n, idx] += y
    return out


@pytest.mark.parametrize('channels,c,k', [(1024, 64, 16), (256, 64, 4), (24, 16, 1), (8, 16, 1),
                                          (2048, 64, 32), (100, 1, 100)])
def test_num_selected_channels(channels, c, k):
    assert num_selected_channels(channels, c) == k


@pytest.mark.parametrize('c', [0, -3, 1.5, True])
def test_num_selected_channels_rejects_bad_c(c):
    with pytest.raises(ValueError, match='integer >= 1'):
        num_selected_channels(64, c)


def test_channel_scorer():
    scorer = ChannelScorer(64, hidden_channels=4)
    s = scorer(torch.randn(3, 64, 5, 5))
    assert s.shape == (3, 64) and bool(((s > 0) & (s < 1)).all())
    assert scorer.fc1.bias is None and scorer.fc2.bias is None
    assert scorer.fc1.weight.shape == (4, 64) and scorer.fc2.weight.shape == (64, 4)
    single = ChannelScorer(64, out_channels=16)
    assert single(torch.randn(1, 64, 2, 2)).shape == (1, 16) and single.fc2 is None
    with pytest.raises(ValueError, match=r'\(N, 64, H, W\)'):
        scorer(torch.randn(1, 32, 5, 5))


def test_gather_channels_matches_indexing():
    x = torch.randn(3, 10, 4, 5)
    idx = torch.tensor([[3, 1], [0, 9], [5, 5]])
    out = gather_channels(x, idx)
    for n in range(3):
        assert torch.equal(out[n], x[n, idx[n]])
    assert torch.equal(gather_channels(x[:1], idx[:1]), x[:1, idx[0]])


@pytest.fixture(params=['cpp', 'python'])
def inference_impl(request, monkeypatch):
    """Run no-grad inference with the compiled plan, or as without a C++ compiler (then the
    block's forward runs: the fallback of ``MMMOD_NO_CPP_OPS=1``)."""
    if request.param == 'cpp':
        if cpp_module('mod') is None:
            pytest.skip('the mmmod_mod C++ operator could not be compiled here')
    else:
        monkeypatch.setattr(mod_module, 'cpp_module', lambda name: None)
    return request.param


@pytest.mark.parametrize('branch', list(BRANCHES))
@pytest.mark.parametrize('fusion', ['first', 'last', 'original'])
@pytest.mark.parametrize('batch', [1, 3])
def test_mod_block_matches_reference(fusion, batch, branch, inference_impl):
    torch.manual_seed(0)
    block = MoDBlock(64, 8, BRANCHES[branch](8), fusion=fusion, selector_reduction=16)
    randomize_bn(block)
    x = torch.randn(batch, 64, 6, 6)
    block.eval()
    with torch.no_grad():
        expected = reference_mod(block, x)
        # no autograd: the compiled plan (in place), or the forward without a compiler
        fast = block(x.clone())
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-4)
    # autograd on: the exact training-time path (eval-mode BN so both use running stats)
    xg = x.clone().requires_grad_()
    exact = block(xg)
    torch.testing.assert_close(exact, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(xg.detach(), x), 'the autograd path must not modify its input'


@pytest.mark.parametrize('fusion', ['first', 'last', 'original'])
def test_fusion_touches_only_its_channels(fusion):
    torch.manual_seed(1)
    c, k = 32, 4
    block = MoDBlock(c, k, make_branch(k), fusion=fusion)
    randomize_bn(block)
    x = torch.randn(2, c, 5, 5)
    idx, _ = block.select(x)
    out = block(x.clone().requires_grad_())
    changed = (out - x).abs().amax((2, 3)) > 0  # (N, C)
    for n in range(2):
        expected = torch.zeros(c, dtype=torch.bool)
        if fusion == 'first':
            expected[:k] = True
        elif fusion == 'last':
            expected[c - k:] = True
        else:
            expected[idx[n]] = True
        assert torch.equal(changed[n], expected)


def test_random_selection_has_no_selector_and_no_scaling():
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_branch(4), selection='random').eval()
    randomize_bn(block)
    assert block.selector is None
    assert not any('selector' in n for n, _ in block.named_parameters())
    x = torch.randn(1, 32, 5, 5)
    torch.manual_seed(3)
    idx, scores = block.select(x)
    assert scores is None and idx.shape == (1, 4) and len(set(idx[0].tolist())) == 4
    torch.manual_seed(3)
    with torch.no_grad():
        out = block(x.clone())
    expected = x.clone()
    expected[:, :4] += block.branch(x[:, idx[0]])
    torch.testing.assert_close(out, expected)
    # different draws pick different channels
    draws = {tuple(block.select(x)[0][0].sort().values.tolist()) for _ in range(20)}
    assert len(draws) > 1


def test_gradients_reach_selector_branch_and_input():
    torch.manual_seed(0)
    block = MoDBlock(64, 8, make_branch(8)).train()
    x = torch.randn(4, 64, 6, 6, requires_grad=True)
    block(x).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_compiled_plan_follows_load_state_dict():
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_branch(4)).eval()
    randomize_bn(block, seed=1)
    x = torch.randn(1, 32, 5, 5)
    with torch.no_grad():
        first = block(x.clone())
    other = MoDBlock(32, 4, make_branch(4)).eval()
    randomize_bn(other, seed=2)
    block.load_state_dict(other.state_dict())
    with torch.no_grad():
        after = block(x.clone())
        expected = reference_mod(other, x)
    assert not torch.allclose(first, after)
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-4)


def test_train_mode_bn_is_not_folded():
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_branch(4)).train()
    x = torch.randn(4, 32, 5, 5)
    with torch.no_grad():
        out = block(x.clone())
    # training-mode BN normalises with batch statistics: same as the autograd path
    torch.testing.assert_close(out, block(x.clone().requires_grad_()).detach())


@pytest.mark.parametrize('kwargs,match', [
    (dict(fusion='middle'), r"fusion must be one of \['first', 'last', 'original'\]"),
    (dict(selection='gumbel'), r"selection must be one of \['topk', 'random'\]"),
    (dict(k=0), r'k \(processed channels\) must be in \[1, 32\]'),
    (dict(k=33), r'must be in \[1, 32\]'),
    (dict(selector_reduction=0), 'selector_reduction must be >= 1'),
])
def test_mod_block_bad_arguments(kwargs, match):
    args = dict(channels=32, k=4, branch=make_branch(4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        MoDBlock(**args)


def test_mod_block_rejects_channel_mismatch():
    block = MoDBlock(32, 4, make_branch(4))
    with pytest.raises(ValueError, match=r'expects \(N, 32, H, W\) input, got \(1, 16, 5, 5\)'):
        block(torch.randn(1, 16, 5, 5))


def test_record_selections():
    torch.manual_seed(0)
    model = nn.Sequential(MoDBlock(32, 4, make_branch(4)), nn.ReLU(),
                          MoDBlock(32, 2, make_branch(2))).eval()
    x = torch.randn(3, 32, 5, 5)
    with record_selections(model) as sel, torch.no_grad():
        model(x.clone())
        model(x.clone())
    assert sorted(sel) == ['0', '2']
    assert len(sel['0']) == 2 and sel['0'][0].shape == (3, 4) and sel['2'][0].shape == (3, 2)
    expected_idx, _ = model[0].select(x)
    assert torch.equal(sel['0'][0], expected_idx)
    # off again after the context: nothing more is recorded
    with torch.no_grad():
        model(x.clone())
    assert len(sel['0']) == 2 and model[0].recorder is None


def test_inference_path_skips_module_calls_but_honours_selector_hooks():
    if cpp_module('mod') is None:
        pytest.skip('the mmmod_mod C++ operator could not be compiled here')
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_branch(4)).eval()
    randomize_bn(block)
    calls = []
    block.branch.register_forward_hook(lambda *_: calls.append('branch'))
    x = torch.randn(1, 32, 5, 5)
    with torch.no_grad():
        fast = block(x.clone())
    assert calls == [], 'no-grad eval runs the compiled plan, not the modules'
    seen = []
    block.selector.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    with torch.no_grad():
        hooked = block(x.clone())
    assert len(seen) == 1 and seen[0].shape == (1, 32), 'a hooked selector is called as a module'
    torch.testing.assert_close(hooked, fast)
    torch.testing.assert_close(fast, reference_mod(block, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dilation', [2, 4])
def test_dilated_branch_matches_reference(dilation, inference_impl):
    torch.manual_seed(0)
    block = MoDBlock(64, 8, make_branch(8, dilation), selector_reduction=16).eval()
    randomize_bn(block)
    x = torch.randn(1, 64, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(block(x.clone()), reference_mod(block, x), rtol=1e-4,
                                   atol=1e-4)


def test_compiled_plan_follows_a_replaced_norm(inference_impl):
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_branch(4)).eval()
    randomize_bn(block, seed=1)
    x = torch.randn(1, 32, 5, 5)
    with torch.no_grad():
        block(x.clone())  # builds the plan
        conv_module = block.branch[1]
        new_bn = nn.BatchNorm2d(conv_module.norm.num_features).eval()
        setattr(conv_module, conv_module.norm_name, new_bn)  # as SyncBN -> BN conversion does
        randomize_bn(new_bn, seed=5)
        torch.testing.assert_close(block(x.clone()), reference_mod(block, x), rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize('batch', [1, 3])
def test_tied_scores_pick_the_lowest_channels_in_every_path(batch, inference_impl):
    # fc1 = 0: the ReLU zeroes the hidden units, every score is exactly sigmoid(0) = 0.5
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_branch(4)).eval()
    randomize_bn(block)
    block.selector.fc1.weight.data.zero_()
    x = torch.randn(batch, 32, 5, 5)
    expected = torch.arange(4).expand(batch, 4)
    idx, scores = block.select(x)
    assert torch.equal(idx, expected) and bool((scores == 0.5).all())
    with record_selections(block) as sel, torch.no_grad():
        out = block(x.clone())
    assert torch.equal(sel[''][0], expected)
    torch.testing.assert_close(out, reference_mod(block, x), rtol=1e-4, atol=1e-4)


def test_top_channels_is_a_descending_stable_top_k():
    scores = torch.tensor([[0.1, 0.7, 0.7, 0.2, 0.7], [0.5, 0.5, 0.5, 0.5, 0.9]])
    values, idx = top_channels(scores, 3)
    assert idx.tolist() == [[1, 2, 4], [4, 0, 1]]
    assert torch.equal(values, scores.gather(1, idx))


def test_compiled_plan_follows_replaced_parameters_and_conversions(inference_impl):
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_branch(4)).eval()
    randomize_bn(block)
    x = torch.randn(2, 32, 7, 7)
    with torch.no_grad():
        block(x.clone())  # builds the plan
        conv = block.branch[1].conv
        conv.weight = nn.Parameter(torch.randn_like(conv.weight))  # a new Parameter object
        block.branch[2].norm.running_var = torch.rand(4) + 0.1  # a new buffer tensor
        torch.testing.assert_close(block(x.clone()), reference_mod(block, x), rtol=1e-4,
                                   atol=1e-4)
        block.double()  # _apply replaces the buffers without registering them
        xd = x.double()
        torch.testing.assert_close(block(xd.clone()), reference_mod(block, xd), rtol=1e-9,
                                   atol=1e-9)
        block.float()
        block.branch[0].norm.eps = 0.5  # a plain attribute, read on every call
        torch.testing.assert_close(block(x.clone()), reference_mod(block, x), rtol=1e-4,
                                   atol=1e-4)


def test_block_copies_and_pickles_after_inference():
    import copy
    import pickle
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_branch(4)).eval()
    randomize_bn(block)
    x = torch.randn(1, 32, 5, 5)
    with torch.no_grad():
        out = block(x.clone())  # builds the compiled plan, if there is a compiler
        for other in (copy.deepcopy(block), pickle.loads(pickle.dumps(block))):
            torch.testing.assert_close(other(x.clone()), out)


def test_compiled_path_is_the_same_with_any_thread_count(inference_impl):
    torch.manual_seed(0)
    block = MoDBlock(96, 6, make_inverted_branch(6)).eval()
    randomize_bn(block)
    x = torch.randn(1, 96, 23, 29)  # rows wider than one register block, odd sizes
    calls = []
    block.branch.register_forward_hook(lambda *_: calls.append('branch'))  # not seen by a plan
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(block(x.clone()))
    finally:
        torch.set_num_threads(threads)
    assert (calls == []) == (inference_impl == 'cpp'), 'the compiled plan ran'
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    torch.testing.assert_close(outs[0], reference_mod(block, x), rtol=1e-4, atol=1e-4)


def test_many_tied_scores_select_like_top_channels(inference_impl):
    # fc2 rows drawn from three distinct rows: C = 256 scores take three values
    torch.manual_seed(0)
    block = MoDBlock(256, 16, make_branch(16)).eval()
    randomize_bn(block)
    rows = torch.randn(3, 16)
    block.selector.fc2.weight.data.copy_(rows[torch.randint(0, 3, (256, ))])
    x = torch.randn(3, 256, 4, 4)
    with torch.no_grad():
        expected = top_channels(block.selector(x), 16)[1]
        with record_selections(block) as sel:
            out = block(x.clone())
    assert torch.equal(sel[''][0], expected)
    torch.testing.assert_close(out, reference_mod(block, x), rtol=1e-4, atol=1e-4)



def run_inference(block, x):
    """``block(x)`` without autograd (on a copy of x), and whether the compiled plan ran it, i.e.
    the branch was not called as modules."""
    calls = []
    handle = block.branch.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            out = block(x.clone())
    finally:
        handle.remove()
    return out, not calls


def check_inference(block, x, plan_runs):
    """Inference matches the reference, by the compiled plan exactly when ``plan_runs``."""
    out, planned = run_inference(block, x)
    with torch.no_grad():
        torch.testing.assert_close(out, reference_mod(block, x), rtol=1e-4, atol=1e-4)
    assert planned == plan_runs, 'the compiled plan ran' if planned else 'the forward ran'


def test_compiled_plan_follows_replaced_submodules(inference_impl):
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_branch(4)).eval()
    randomize_bn(block)
    x = torch.randn(2, 32, 5, 5)
    cpp = inference_impl == 'cpp'
    check_inference(block, x, cpp)  # builds the plan
    block.branch = make_inverted_branch(4).eval()  # a whole new branch, other layer shapes
    randomize_bn(block.branch, seed=1)
    check_inference(block, x, cpp)
    block.branch[2] = ConvModule(24, 4, 1, norm_cfg=dict(type='BN'), act_cfg=None).eval()
    randomize_bn(block.branch[2], seed=2)
    check_inference(block, x, cpp)
    block.branch[1].activate = nn.ReLU()  # ReLU6 -> ReLU: another activation in the kernel
    check_inference(block, x, cpp)
    block.selector.fc2 = nn.Linear(2, 32, bias=False)  # a new FC module in the selector
    check_inference(block, x, cpp)
    block.drop_path = DropPath(0.5).eval()  # the identity in eval mode
    check_inference(block, x, cpp)
    block.branch[0].activate = nn.GELU()  # an activation the kernel does not have
    check_inference(block, x, False)
    block.branch[0].activate = nn.ReLU6()
    check_inference(block, x, cpp)


def test_block_with_drop_path_infers_like_the_reference(inference_impl):
    # regression: building the plan of a block with a DropPath raised a TypeError
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_branch(4), drop_path_rate=0.2).eval()
    randomize_bn(block)
    check_inference(block, torch.randn(2, 32, 5, 5), inference_impl == 'cpp')
    block.drop_path.train()  # stochastic depth samples: the forward runs
    _, planned = run_inference(block, torch.randn(2, 32, 5, 5))
    assert not planned


def test_compiled_plan_follows_tensor_edits_and_conversions(inference_impl):
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_branch(4)).eval()
    randomize_bn(block)
    x = torch.randn(1, 32, 5, 5)
    cpp = inference_impl == 'cpp'
    check_inference(block, x, cpp)  # builds the plan
    with torch.no_grad():
        block.branch[0].conv.weight.mul_(-2)  # in place: the same tensors, new contents
        block.branch[2].norm.running_mean.add_(1)
    check_inference(block, x, cpp)
    block.selector.fc2.weight.data = torch.randn(32, 2)  # the same Parameter, another tensor
    check_inference(block, x, cpp)
    other = MoDBlock(32, 4, make_branch(4)).eval()
    randomize_bn(other, seed=3)
    block.load_state_dict(other.state_dict(), assign=True)  # new Parameter and buffer objects
    check_inference(block, x, cpp)
    # a conversion of one norm alone, which the block's _apply does not see: the norm's
    # buffers become new tensors, its parameters stay the same objects with new data
    norm = block.branch[1].norm
    norm.double()
    with torch.no_grad():
        norm.running_var.mul_(3)
        norm.weight.mul_(-1)
    norm.float()
    check_inference(block, x, cpp)
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:  # conversions swap the tensors inside the same Parameter objects
        conv = block.branch[2].conv
        conv.double()
        with torch.no_grad():
            conv.weight.mul_(0.5)
        conv.float()
        check_inference(block, x, cpp)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


def test_pruned_conv_runs_the_forward_then_the_plan_again(inference_impl):
    from torch.nn.utils import prune
    torch.manual_seed(0)
    block = MoDBlock(64, 8, make_branch(8)).eval()
    randomize_bn(block)
    x = torch.randn(1, 64, 6, 6)
    cpp = inference_impl == 'cpp'
    check_inference(block, x, cpp)
    conv = block.branch[1].conv
    # the weight becomes an attribute computed by a forward pre-hook: no tensor a plan can hold
    prune.l1_unstructured(conv, 'weight', amount=0.5)
    check_inference(block, x, False)
    prune.remove(conv, 'weight')  # a Parameter again (holding the pruned values)
    check_inference(block, x, cpp)


def test_inputs_the_plan_declines_run_the_forward():
    torch.manual_seed(0)
    block = MoDBlock(32, 4, make_inverted_branch(4)).eval()
    randomize_bn(block)
    x = torch.randn(2, 32, 5, 5)
    check_inference(block, x.to(memory_format=torch.channels_last), False)
    block.branch[1].norm.train()  # batch statistics: not foldable
    check_inference(block, x[:1], False)  # one sample: the same statistics as the reference's


def test_import_installs_no_global_hooks():
    """Importing mmmod registers names only: torch's process-wide module, parameter and buffer
    registration hooks are the same before and after it, and after MoD and PiX inference."""
    code = textwrap.dedent("""
        import json
        import torch
        from torch.nn.modules import module

        def hooks():
            return {name: sorted((key, f'{h.__module__}.{h.__qualname__}')
                                 for key, h in getattr(module, name).items())
                    for name in ('_global_module_registration_hooks',
                                 '_global_parameter_registration_hooks',
                                 '_global_buffer_registration_hooks')}

        before = hooks()
        import mmmod  # noqa: F401
        after_import = hooks()
        from mmmod.models import MobileNetV2MoD, ResNetPiX
        with torch.no_grad():
            MobileNetV2MoD(arch='MoD').eval()(torch.rand(1, 3, 32, 32))
            ResNetPiX(depth=50).eval()(torch.rand(1, 3, 32, 32))
        print(json.dumps(dict(before=before, after_import=after_import, after_use=hooks())))
    """)
    root = osp.dirname(osp.dirname(osp.abspath(mmmod.__file__)))
    # the timeout only bounds a hang (a first run compiles the C++ operators)
    proc = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['after_import'] == result['before'], result
    assert result['after_use'] == result['before'], result
