import math

import pytest
import torch

from mmmod.models.layers.gumbel_gate import (GATE_LOGIT_INIT, GATE_MODES, ChannelGate,
                                             DependentGateHead, IndependentGateHead,
                                             sample_gates)


def test_straight_through_values_are_hard_and_gradient_is_soft():
    torch.manual_seed(0)
    logits = torch.randn(64, 2, requires_grad=True)
    z = sample_gates(logits, training=True)
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    (z * torch.arange(64.)).sum().backward()
    # the soft sample's gradient: d soft_on / d l_on = soft_on * (1 - soft_on) > 0
    assert (logits.grad[:, 1] > 0).sum() >= 60 and torch.allclose(logits.grad[:, 0],
                                                                  -logits.grad[:, 1])


def test_sampling_frequency_matches_sigmoid_of_logit_difference():
    torch.manual_seed(0)
    logits = torch.tensor([[0.1, 4.0], [0.0, 0.0], [1.0, -1.0], [0.3, 0.8]])
    expected = torch.sigmoid(logits[:, 1] - logits[:, 0])
    n = 20000
    for training, mode in ((True, 'threshold'), (False, 'stochastic')):
        z = sample_gates(logits.expand(n, -1, -1), training, mode)  # (n, 4)
        freq = z.mean(0)
        # binomial std <= 0.0036 at n = 20000: 0.015 is > 4 sigma
        assert torch.allclose(freq, expected, atol=0.015), (training, freq, expected)


def test_threshold_is_deterministic_mask_p_on_above_tau():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 2)
    p_on = logits.softmax(-1)[..., 1]
    for tau in (0.5, 0.2, 0.8):
        z1 = sample_gates(logits, False, 'threshold', tau)
        z2 = sample_gates(logits, False, 'threshold', tau)
        assert torch.equal(z1, z2) and torch.equal(z1.bool(), p_on > tau)
    assert torch.equal(sample_gates(logits, False, 'on'), torch.ones(5, 7))


@pytest.mark.parametrize('mode,tau,match', [
    ('ensemble', 0.5, r"one of \['threshold', 'stochastic', 'on'\], got 'ensemble'"),
    ('threshold', 1.5, r'tau must be a number in \[0, 1\)'),
])
def test_bad_mode(mode, tau, match):
    with pytest.raises(ValueError, match=match):
        sample_gates(torch.zeros(1, 2), False, mode, tau)
    assert mode not in GATE_MODES or tau >= 1


def test_channel_gate_groups_and_zeroing():
    gate = ChannelGate(10, 4, always_on=1)
    assert (gate.num_groups, gate.num_gates) == (3, 2)
    z = gate.full_gates(torch.tensor([[0., 1.], [0., 0.]]))
    assert z.tolist() == [[1., 0., 1.], [1., 0., 0.]]  # first group always on
    x = torch.randn(2, 10, 3, 3)
    y = gate(x, z)
    mask = gate.channel_mask(z)
    assert mask.tolist()[1] == [True] * 4 + [False] * 6
    assert torch.equal(y[mask[:, :, None, None].expand_as(x)],
                       x[mask[:, :, None, None].expand_as(x)])
    assert (y[~mask] == 0).all()  # gated off: exactly zero, not scaled
    assert gate.active_channels(z).tolist() == [6.0, 4.0]  # last group holds 2 channels
    with pytest.raises(ValueError, match='group_size'):
        ChannelGate(10, 0)


@pytest.mark.parametrize('head', [DependentGateHead(32, 5), IndependentGateHead(5)])
def test_heads_start_about_98_percent_on(head):
    head.eval()
    logits = head(torch.randn(3, 32))
    assert logits.shape[1:] == (5, 2)
    p_on = logits.softmax(-1)[..., 1]
    if isinstance(head, IndependentGateHead):
        assert torch.allclose(p_on, torch.tensor(
            1 / (1 + math.exp(GATE_LOGIT_INIT[0] - GATE_LOGIT_INIT[1]))))
    assert p_on.min() > 0.9
    assert all('.' not in n or n.split('.')[0] in ('fc1', 'bn', 'fc2', 'logits')
               for n, _ in head.named_parameters())


def test_dependent_head_is_per_gate_and_batch_one_trains():
    torch.manual_seed(0)
    head = DependentGateHead(8, 3, hidden=4).train()
    x = torch.randn(4, 8)
    logits = head(x)
    # gate 1's logits depend only on its own 4 hidden units: zero its fc2 group, others unchanged
    with torch.no_grad():
        head.fc2.weight[2:4] = 0
    logits2 = head(x)
    assert torch.allclose(logits[:, [0, 2]], logits2[:, [0, 2]], atol=1e-6)
    assert not torch.allclose(logits[:, 1], logits2[:, 1])
    assert head(torch.randn(1, 8)).shape == (1, 3, 2)  # BN falls back to running stats


def test_dependent_head_bn_follows_momentum_none():
    """mmengine's BN recalibration sets momentum=None (cumulative average): the head's BN must
    honour it, and count its batches."""
    torch.manual_seed(0)
    head = DependentGateHead(8, num_gates=2, hidden=4).train()
    head.bn.momentum = None
    head.bn.reset_running_stats()
    batches = [torch.randn(5, 8), torch.randn(7, 8)]
    means = []
    for pooled in batches:
        head(pooled)
        means.append(head.fc1(pooled).mean(0).detach())
    assert int(head.bn.num_batches_tracked) == 2
    torch.testing.assert_close(head.bn.running_mean, (means[0] + means[1]) / 2)
    # a single-sample training batch uses the running statistics and leaves them alone
    before = head.bn.running_mean.clone()
    head(torch.randn(1, 8))
    torch.testing.assert_close(head.bn.running_mean, before)
