"""tools/benchmark_dce.py's logic (no timing asserted): one tiny run fills every field, the
active sub-network's MACs against a count by hand, the saved-activation measurement, errors."""
import importlib.util
import math
import os.path as osp
from pathlib import Path

import pytest
import torch

from mmmod.analysis.benchmark import build_classifier
from mmmod.analysis.benchmark_dce import (CANDIDATES, DCE_MODELS, active_macs, benchmark_dce,
                                          check_models, format_report)
from mmmod.analysis.complexity import complexity

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_WIDTHS = dict(depth=50, stem_channels=16, base_channels=8)
TINY = {
    'tiny': dict(bandit=dict(type='BanditResNet', **TINY_WIDTHS),
                 baseline=dict(type='ResNet', **TINY_WIDTHS),
                 batch_size=2, input_size=16, num_classes=10),
    'missing': dict(bandit=dict(type='BanditNope', depth=19),
                    baseline=dict(type='VGG', depth=19),
                    batch_size=2, input_size=16, num_classes=10),
}
SHAPE = (16, 16)


@pytest.fixture(scope='module')
def tiny_run():
    return benchmark_dce(['tiny', 'missing'], [0.3, 1.0], rounds=1, min_time=1e-3, threads=1,
                         table=TINY,
                         macs_samples=2, progress=False)


def test_tiny_run_has_every_field(tiny_run):
    res = tiny_run
    assert 'BanditNope is not registered' in res['skipped']['missing']
    assert res['settings']['tiny'] == dict(batch_size=2, input_size=16, bandit='BanditResNet',
                                           baseline='ResNet')
    assert [(r['model'], r['ratio']) for r in res['rows']] == [('tiny', 0.3), ('tiny', 1.0)]
    for r in res['rows']:
        assert set(r['ms']) == set(r['saved_mb']) == set(r['rounds_s']) == set(
            r['weight_copies_mb']) == set(CANDIDATES)
        # only the thin step gathers weight slices; the others save the parameters themselves
        assert r['weight_copies_mb']['thin'] > 0
        assert r['weight_copies_mb']['baseline'] == r['weight_copies_mb']['masked'] == 0
        assert all(v > 0 for v in r['ms'].values()) and all(
            len(v) == 1 for v in r['rounds_s'].values())
        for key in ('thin_speedup', 'masked_speedup', 'thin_over_masked',
                    'speedup_over_macs_ratio'):
            median, q1, q3 = r[key]
            assert 0 < q1 <= median <= q3
        assert len(r['macs']['active']) == 2 and 'FlopAnalyzer' in r['macs']['counted']
        assert r['macs_ratio'] == r['macs']['baseline'] / r['macs']['active_mean']
        assert r['speedup_over_macs_ratio'][0] == pytest.approx(
            r['thin_speedup'][0] / r['macs_ratio'])
        assert r['saved_thin_over_baseline'] == pytest.approx(
            r['saved_mb']['thin'] / r['saved_mb']['baseline'])
        assert 0 < r['num_active'] <= r['num_arms']
    text = format_report(res)
    assert '| tiny | 0.3 |' in text and '| tiny | 1 |' in text
    assert 'missing: skipped' in text
    assert 'not peak RSS' in text


def test_macs_ratio_is_one_with_every_channel_active(tiny_run):
    full = tiny_run['rows'][1]
    assert full['num_active'] == full['num_arms']
    assert full['macs_ratio'] == pytest.approx(1.0)
    # p = 0.3 computes a smaller sub-network
    assert tiny_run['rows'][0]['macs_ratio'] > 1.5


def test_saved_activations_thin_below_masked(tiny_run):
    low, full = (r['saved_mb'] for r in tiny_run['rows'])
    assert low['thin'] < low['masked']
    assert low['thin'] < low['baseline']
    # every channel active: the thin step saves about what the masked one does (same order)
    assert 0.5 < full['thin'] / full['masked'] < 2
    assert 0.5 < full['thin'] / full['baseline'] < 2


def _hand_conv_macs(model, masks):
    """Conv MACs of the thin forward with ``masks``, counted by hand from the masks: every conv
    at its output size (from a forward of the plain network: same geometry, same names) with
    its active filters times its active input channels. A block's first convs read the stream
    at full width (the thin walk gathers nothing at a block input), so the stem's consumers
    count all of its channels."""
    baseline = build_classifier(dict(type='ResNet', **TINY_WIDTHS), 10).eval()
    out_hw = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: out_hw.__setitem__(n, o.shape[2:]))
             for n, m in baseline.named_modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        baseline(torch.zeros(1, 3, *SHAPE), mode='tensor')
    for h in hooks:
        h.remove()
    backbone = model.backbone
    names = {id(m): n for n, m in model.named_modules()}
    active_out, active_in = {}, {}
    for arm, mask in zip(backbone.arms, masks):
        for conv, _ in arm.producers:
            active_out[names[id(conv)]] = int(mask.sum())
        if arm.site != 'stem':
            for consumer in arm.consumers:
                active_in[names[id(consumer[0])]] = int(mask.sum())
    total = 0
    for name, conv in model.named_modules():
        if isinstance(conv, torch.nn.Conv2d):
            h, w = out_hw[name]
            kh, kw = conv.kernel_size
            total += h * w * kh * kw * active_in.get(name, conv.in_channels) * active_out.get(
                name, conv.out_channels)
    return total


@pytest.mark.parametrize('ratio', [0.3, 1.0])
def test_active_macs_match_a_count_by_hand(ratio):
    torch.manual_seed(0)
    model = build_classifier(dict(type='BanditResNet', ratio=ratio, **TINY_WIDTHS), 10)
    masks = model.backbone.bandit.select()  # the untried round's first selection
    counted = active_macs(model, masks, SHAPE)
    assert counted['by_operator']['conv'] == _hand_conv_macs(model, masks)
    base = complexity(build_classifier(dict(type='ResNet', **TINY_WIDTHS), 10), SHAPE)
    if ratio == 1.0:
        assert counted['macs'] == base['macs']
    else:  # proportionally fewer: roughly p^2 of the arms' conv MACs, well below the full
        assert counted['by_operator']['conv'] < 0.6 * base['by_operator']['conv']
    assert model.backbone.execution == 'thin' and model.backbone._fixed_at is None  # untouched


@pytest.mark.parametrize('kwargs,match', [
    (dict(ratios=[0.0]), r'ratio must be in \(0, 1\], got 0.0'),
    (dict(ratios=[1.5]), r'ratio must be in \(0, 1\], got 1.5'),
    (dict(ratios=[]), 'at least one'),
    (dict(models=['resnet99']), r"unknown model\(s\) \['resnet99'\]: choose from "
                                r"\['resnet50-224', 'resnet50-cifar', 'vgg19-cifar'\]"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        benchmark_dce(**{**dict(models=['resnet50-cifar'], ratios=[0.5]), **kwargs})


def _tool():
    path = Path(__file__).parents[2] / 'tools' / 'benchmark_dce.py'
    spec = importlib.util.spec_from_file_location('benchmark_dce_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('argv,match', [
    (['--ratios', '0'], r'ratio must be in (0, 1], got'),
    (['--ratios', 'nan'], r'ratio must be in (0, 1], got'),
    (['--models', 'resnet99'], "invalid choice: 'resnet99' (choose from"),
])
def test_tool_refuses_bad_arguments(argv, match, capsys):
    with pytest.raises(SystemExit):
        _tool().parse_args(argv)
    err = capsys.readouterr().err
    assert match in err
    if '--models' in argv:
        assert all(name in err for name in DCE_MODELS)


def test_tool_defaults_are_the_table():
    args = _tool().parse_args([])
    assert args.models == list(DCE_MODELS) and args.ratios == [0.3, 0.5, 0.7]
    check_models(args.models)
    paper = DCE_MODELS['resnet50-cifar']
    assert (paper['batch_size'], paper['input_size']) == (64, 32)
    assert (DCE_MODELS['resnet50-224']['batch_size'],
            DCE_MODELS['resnet50-224']['input_size']) == (8, 224)
    # the networks the paper's configs train (configs/dce/), not another variant
    from mmengine.config import Config
    for name, config in (('vgg19-cifar', 'vgg19bn_1xb64_cifar10.py'),
                         ('resnet50-cifar', 'resnet50_1xb64_cifar10.py')):
        backbone = Config.fromfile(osp.join(REPO, 'configs', 'dce', config)).model.backbone
        baseline = DCE_MODELS[name]['baseline']
        assert {k: backbone.get(k) for k in baseline} == baseline, name
        # what the table leaves out is the output choice or upstream's default
        assert set(backbone) - set(baseline) <= {'out_indices', 'num_stages', 'style'}, name
    assert not math.isnan(args.min_time)
