import json
import subprocess
import sys

import pytest
import torch

from mmmod.analysis.benchmark import (Timing, build_classifier, quartiles, ratio_stats,
                                      strip_mod_blocks, time_interleaved)
from mmmod.models import MoDBlock

# Bounds a hung subprocess; no normal run comes near it, even on a loaded machine.
HANG_TIMEOUT_S = 30 * 60


def test_strip_mod_blocks_leaves_the_rest_untouched():
    model = build_classifier('resnet50-mod')
    model.eval()
    ceiling = strip_mod_blocks(model)
    assert any(isinstance(m, MoDBlock) for m in model.modules())
    assert not any(isinstance(m, MoDBlock) for m in ceiling.modules())
    assert isinstance(ceiling.backbone.layer3[1], torch.nn.Identity)
    # the standard parts are the same weights; the MoD selectors/branches are gone
    sd, cd = model.state_dict(), ceiling.state_dict()
    assert set(cd) < set(sd) and all(torch.equal(cd[k], sd[k]) for k in cd)
    assert all('selector' not in k and 'branch' not in k for k in cd)
    # deleting MoD blocks == skipping them: same output as a network whose MoD adds nothing
    for m in model.modules():
        if isinstance(m, MoDBlock):
            torch.nn.init.zeros_(m.branch[-1].norm.weight)
            torch.nn.init.zeros_(m.branch[-1].norm.bias)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ceiling(x, mode='tensor'), model(x.clone(), mode='tensor'))


def test_ratio_stats_and_quartiles():
    a, b = Timing('a', [2.0, 4.0, 6.0]), Timing('b', [1.0, 2.0, 2.0])
    assert ratio_stats(a, b) == quartiles([2.0, 2.0, 3.0])
    assert quartiles([5.0]) == (5.0, 5.0, 5.0)
    assert a.median_ms == 4000.0


def test_time_interleaved_runs_every_fn_every_round():
    calls = {'x': 0, 'y': 0}

    def make(name):
        def fn():
            calls[name] += 1
        return fn

    res = time_interleaved({'x': make('x'), 'y': make('y')}, rounds=3, min_time=0.001,
                           progress=False)
    assert [len(res[n].rounds) for n in 'xy'] == [3, 3]
    assert all(t > 0 for n in 'xy' for t in res[n].rounds)
    assert calls['x'] > 3 and calls['y'] > 3


def test_benchmark_tool_writes_its_table(tmp_path):
    out = tmp_path / 'bench.json'
    proc = subprocess.run(
        [sys.executable, 'tools/benchmark_mod.py', '--models', 'mobilenetv2-mod', '--rounds',
         '2', '--min-time', '0.01', '--input-size', '64', '--json', str(out)],
        capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '| mobilenetv2-mod | mobilenetv2' in proc.stdout
    row = json.loads(out.read_text())['results']['inference']['mobilenetv2-mod']
    assert row['baseline'] == 'mobilenetv2' and row['paper_cpu_speedup'] == 1.43
    assert row['ms'] > 0 and row['ceiling_ms'] > 0
    for key in ('speedup', 'ceiling_speedup', 'ratio_to_ceiling'):
        median, q1, q3 = row[key]
        assert 0 < q1 <= median <= q3


def run_benchmark(*args):
    return subprocess.run([sys.executable, 'tools/benchmark.py', *args], capture_output=True,
                          text=True, timeout=HANG_TIMEOUT_S)


def test_generic_benchmark_tool(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_benchmark('mobilenetv2', 'mobilenetv2-mod', '--shape', '64', '64', '--rounds',
                         '2', '--min-time', '0.01', '--json', str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())['results']['cpu']
    for mode in ('inference', 'train'):
        assert set(res[mode]) == {'mobilenetv2', 'mobilenetv2-mod'}
        assert res[mode]['mobilenetv2']['speedup'] == [1.0, 1.0, 1.0]  # the baseline
        assert all(row['ms'] > 0 and row['peak_memory_mb'] >= 0 for row in res[mode].values())
    # a training step holds activations for backward: it needs more memory than inference
    assert (res['train']['mobilenetv2']['peak_memory_mb'] >
            res['inference']['mobilenetv2']['peak_memory_mb'])
    assert '## train on cpu' in proc.stdout


def test_generic_benchmark_tool_on_a_segmentor_config():
    proc = run_benchmark('configs/cityscapes/fcn_r50-mod-d8_4xb2-80k_cityscapes-512x1024.py',
                         '--shape', '64', '64', '--rounds', '1', '--min-time', '0.01',
                         '--no-memory', '--no-train')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '| configs/cityscapes/fcn_r50-mod-d8' in proc.stdout


@pytest.mark.parametrize('args,match', [
    (('resnet50', '--baseline', 'resnet101'), "--baseline 'resnet101' is not one of"),
    (('configs/nope.py', ), 'config file not found: configs/nope.py'),
])
def test_generic_benchmark_tool_errors(args, match):
    proc = run_benchmark(*args)
    assert proc.returncode != 0 and match in proc.stderr
