"""tools/benchmark_pix.py's logic (no timing asserted): speed-up vs FLOPs-bound bookkeeping, the
PiX workload it replays, and its report."""
import pytest

from mmmod.analysis.benchmark import Timing, build_classifier
from mmmod.analysis.benchmark_pix import (format_report, model_cfgs, op_fns, pix_op_inputs,
                                          speedup_rows)


def test_speedup_rows_are_per_round_ratios_against_the_bound():
    timings = {'resnet50': Timing('resnet50', [0.30, 0.20, 0.40]),
               'resnet50-pix': Timing('resnet50-pix', [0.20, 0.20, 0.20])}
    (row, ) = speedup_rows(timings, [50], {50: 1.25})
    assert row['speedup'] == pytest.approx((1.5, 1.25, 1.75))  # ratios 1.5, 1.0, 2.0
    assert row['ms'] == (300.0, 200.0)
    assert abs(row['of_bound'] - 1.5 / 1.25) < 1e-12


def test_op_inputs_are_every_pix_call_and_both_ops_run():
    cfg = dict(model_cfgs(50)['resnet50-pix'], stem_channels=16, base_channels=16)
    model = build_classifier(cfg)
    calls = pix_op_inputs(model, shape=(32, 32))
    assert len(calls) == 16
    x, p, zeta, tau, mode = calls[0]  # layer1.0: 16 channels at 8x8, zeta 1
    assert x.shape == (1, 16, 8, 8) and p.shape == (1, 16) and zeta == 1 and mode == 'pix'
    assert [c[2] for c in calls[3:5]] == [2, 4]  # layer2.0, layer2.1
    for train in (False, True):
        fns = op_fns(calls, train=train)
        assert set(fns) == {'fast', 'naive'}
        for fn in fns.values():
            fn()


def test_report_has_every_section():
    q = (1.3, 1.2, 1.4)
    result = dict(threads=2, rounds=3, train_batch_size=2,
                  flops=[dict(depth=50, gmacs=(4.12, 3.18), params_m=(25.6, 25.5),
                              paper_gflops=(4.12, 3.18), paper_params_m=(25.5, 25.5),
                              bound=1.296)],
                  inference=[dict(depth=50, ms=(100.0, 80.0), speedup=q, bound=1.296,
                                  of_bound=1.0)],
                  train=[dict(depth=50, ms=(300.0, 250.0), speedup=q, bound=1.296,
                              of_bound=1.0)],
                  op=dict(calls=16, max_share=0.5,
                          forward=dict(ms=(2.0, 1.0), speedup=(2.0, 1.9, 2.1)),
                          **{'forward+backward': dict(ms=(6.0, 3.0), speedup=(2.0, 1.9, 2.1))}))
    text = format_report(result)
    for needle in ('| 50 | 4.12 / 25.6 | 3.18 / 25.5 |', '1.30x [1.20, 1.40]', 'training step',
                   '| forward+backward | 6.00 | 3.00 | 2.00x [1.90, 2.10] |', '50% of the groups'):
        assert needle in text, needle
