"""The CUCB channel bandit against a plain reference of Alg. 1 / Eq. 2-3."""
import math

import pytest
import torch

from mmmod.models.layers.channel_bandit import ChannelBandit, raw_saliency

WIDTHS = (6, 3, 5)


def reference_update(counts, means, raw, active, widths):
    """Eq. 3 and the running mean, one arm at a time."""
    counts, means = list(counts), list(means)
    start = 0
    for width in widths:
        arms = range(start, start + width)
        norm = math.sqrt(sum(abs(raw[a])**2 for a in arms if active[a]))
        for a in arms:
            if active[a]:
                sal = abs(raw[a]) / norm if norm > 0 else 0.0
                counts[a] += 1
                means[a] += (sal - means[a]) / counts[a]
        start += width
    return counts, means


def reference_select(counts, means, t, ratio, widths):
    """Alg. 1 steps 7-8 with each layer's best kept; scores must be distinct."""
    ucb = [m + math.sqrt(3 * math.log(t) / (2 * c)) for c, m in zip(counts, means)]
    k = max(len(widths), math.floor(ratio * len(ucb)))
    chosen, start = set(), 0
    for width in widths:
        chosen.add(max(range(start, start + width), key=lambda a: ucb[a]))
        start += width
    for a in sorted(range(len(ucb)), key=lambda a: -ucb[a]):
        if len(chosen) >= k:
            break
        chosen.add(a)
    return chosen


def _flat(masks):
    return torch.cat(masks)


def _run(bandit, steps, generator):
    selections = []
    for _ in range(steps):
        masks = bandit.select()
        selections.append(_flat(masks).clone())
        raw = [torch.randn(w, generator=generator, dtype=torch.float64) for w in bandit.widths]
        bandit.update(raw, masks)
    return selections


def test_update_matches_reference():
    bandit = ChannelBandit(WIDTHS, ratio=0.5)
    g = torch.Generator().manual_seed(0)
    counts, means = [0] * sum(WIDTHS), [0.0] * sum(WIDTHS)
    for _ in range(6):
        masks = bandit.select()
        raw = [torch.randn(w, generator=g, dtype=torch.float64) for w in WIDTHS]
        bandit.update(raw, masks)
        counts, means = reference_update(counts, means, _flat(raw).tolist(),
                                         _flat(masks).tolist(), WIDTHS)
        assert bandit.counts.tolist() == counts
        torch.testing.assert_close(bandit.means, torch.tensor(means, dtype=torch.float64))
    assert int(bandit.step) == 6


def test_selection_matches_reference_after_initialisation():
    bandit = ChannelBandit(WIDTHS, ratio=0.4)
    g = torch.Generator().manual_seed(1)
    _run(bandit, 10, g)
    assert bandit.untried == 0
    for _ in range(5):
        masks = bandit.select()
        t = bandit.num_arms + int(bandit.step) + 1
        expected = reference_select(bandit.counts.tolist(), bandit.means.tolist(), t, 0.4,
                                    WIDTHS)
        assert set(torch.nonzero(_flat(masks)).flatten().tolist()) == expected
        bandit.update([torch.randn(w, generator=g, dtype=torch.float64) for w in WIDTHS],
                      masks)


@pytest.mark.parametrize('ratio', [0.2, 0.3, 0.5, 1.0])
def test_untried_arms_first_cover_all_in_ceil_one_over_p_steps(ratio):
    widths = (40, 24, 16)
    bandit = ChannelBandit(widths, ratio=ratio)
    _run(bandit, math.ceil(1 / ratio), torch.Generator().manual_seed(2))
    assert bandit.untried == 0


def test_per_arm_initialisation_activates_each_arm_in_turn():
    bandit = ChannelBandit(WIDTHS, ratio=0.3, init='per_arm')
    selections = _run(bandit, bandit.num_arms, torch.Generator().manual_seed(3))
    for step, mask in enumerate(selections):
        assert mask[step] and int(mask.sum()) == bandit.num_active


def test_every_layer_keeps_a_channel():
    bandit = ChannelBandit((50, 1, 2), ratio=0.05)  # 2 arms of 53 by ratio; 3 layers
    assert bandit.num_active == 3
    g = torch.Generator().manual_seed(4)
    for _ in range(30):
        masks = bandit.select()
        assert all(int(m.sum()) >= 1 for m in masks)
        raw = [torch.randn(w, generator=g).abs() * (100 if i == 0 else 1e-3)
               for i, w in enumerate(bandit.widths)]
        bandit.update(raw, masks)


def test_active_count_is_floor_of_ratio():
    # the paper's VGG-19: 5504 channels, "20% = 1100 channels"
    widths = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)
    assert sum(widths) == 5504
    assert ChannelBandit(widths, ratio=0.2).num_active == 1100


def test_state_dict_resume_gives_same_selections():
    g = torch.Generator().manual_seed(5)
    raws = [[torch.randn(w, generator=g, dtype=torch.float64) for w in WIDTHS]
            for _ in range(12)]

    def run(bandit, steps):
        out = []
        for raw in steps:
            masks = bandit.select()
            out.append(_flat(masks).clone())
            bandit.update(raw, masks)
        return out

    straight = run(ChannelBandit(WIDTHS, ratio=0.3, seed=7), raws)
    first = ChannelBandit(WIDTHS, ratio=0.3, seed=7)
    head = run(first, raws[:5])
    resumed = ChannelBandit(WIDTHS, ratio=0.3, seed=7)
    resumed.load_state_dict(first.state_dict())
    tail = run(resumed, raws[5:])
    assert all(torch.equal(a, b) for a, b in zip(straight, head + tail))
    assert set(first.state_dict()) == {'counts', 'means', 'step'}


def test_seed_decides_ties():
    first = [_flat(ChannelBandit(WIDTHS, ratio=0.3, seed=s).select()) for s in range(6)]
    assert len({tuple(m.tolist()) for m in first}) > 1  # ties broken differently per seed
    again = _flat(ChannelBandit(WIDTHS, ratio=0.3, seed=0).select())
    assert torch.equal(first[0], again)


def test_fixed_selection_by_mean_and_random():
    bandit = ChannelBandit(WIDTHS, ratio=0.5)
    _run(bandit, 8, torch.Generator().manual_seed(6))
    fixed = _flat(bandit.select_fixed('mean'))
    order = torch.argsort(bandit.means, descending=True)
    assert int(fixed.sum()) == bandit.num_active
    # the highest means are in (each layer's best is forced in too)
    assert fixed[order[:bandit.num_active - len(WIDTHS)]].all()
    random = bandit.select_fixed('random')
    assert int(_flat(random).sum()) == bandit.num_active and all(m.any() for m in random)
    with pytest.raises(ValueError, match=r"one of \('mean', 'random'\)"):
        bandit.select_fixed('ucb')


def test_inactive_saliencies_not_observed():
    bandit = ChannelBandit((4, ), ratio=0.5)
    masks = [torch.tensor([True, False, True, False])]
    bandit.update([torch.tensor([3.0, 100.0, 4.0, 100.0])], masks)
    torch.testing.assert_close(bandit.means, torch.tensor([0.6, 0, 0.8, 0], dtype=torch.float64))
    assert bandit.counts.tolist() == [1, 0, 1, 0]


def test_raw_saliency_is_the_loss_change_of_zeroing_a_channel():
    """For a loss linear in h the first-order estimate (Eq. 2) is exact (Eq. 1)."""
    h = torch.randn(2, 3, 4, 4, requires_grad=True)
    w = torch.randn(3, 4, 4)
    loss_of = lambda x: (x * w).sum()  # noqa: E731
    loss = loss_of(h)
    grad, = torch.autograd.grad(loss, h)
    sal = raw_saliency(h, grad).abs()
    for c in range(3):
        zeroed = h.detach().clone()
        zeroed[:, c] = 0
        torch.testing.assert_close(sal[c].float(), (loss - loss_of(zeroed)).abs().detach())


@pytest.mark.parametrize('kwargs, match', [
    (dict(widths=(4, ), ratio=0), r'ratio p must be in \(0, 1\], got 0'),
    (dict(widths=(4, ), ratio=1.5), r'in \(0, 1\], got 1.5'),
    (dict(widths=(), ratio=0.5), 'no arms were found'),
    (dict(widths=(4, 0), ratio=0.5), 'no arms were found'),
    (dict(widths=(4, ), ratio=0.5, init='random'), r"init must be one of \('untried', 'per_arm'\)"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChannelBandit(**kwargs)


def test_update_checks_layers():
    bandit = ChannelBandit(WIDTHS, ratio=0.5)
    with pytest.raises(ValueError, match='expected 3 layers'):
        bandit.update([torch.zeros(6)], [torch.ones(6, dtype=torch.bool)])
