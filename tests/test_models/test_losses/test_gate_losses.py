import pytest
import torch

from mmmod.models import BatchActivationLoss, FLOPsActivationLoss
from mmmod.models.layers.gumbel_gate import GateRecord
from mmmod.registry import MODELS


def records(z1, z2, f1, f2, full1=100.0, full2=50.0):
    return [GateRecord(z1, f1, full1, 0.0), GateRecord(z2, f2, full2, 0.0)]


def test_batch_activation_value_and_gradient():
    z1 = torch.tensor([[1., 0., 1.], [1., 1., 1.]], requires_grad=True)
    z2 = torch.tensor([[0.], [1.]], requires_grad=True)
    recs = records(z1, z2, torch.ones(2), torch.ones(2))
    loss = BatchActivationLoss(target=0.25, loss_weight=2.0)(recs)
    rate = 6 / 8
    assert torch.isclose(loss, torch.tensor(2.0 * (rate - 0.25) ** 2))
    loss.backward()
    # d/dz_i of w (mean z - t)^2 = 2 w (rate - t) / |G||B|
    assert torch.allclose(z1.grad, torch.full_like(z1, 2 * 2.0 * (rate - 0.25) / 8))
    assert torch.allclose(z2.grad, torch.full_like(z2, 2 * 2.0 * (rate - 0.25) / 8))


def test_one_sided_is_const_quad():
    z = torch.tensor([[1., 0., 1., 1.]], requires_grad=True)  # rate 0.75
    recs = [GateRecord(z, torch.ones(1), 1.0, 0.0)]
    assert BatchActivationLoss(0.8, one_sided=True)(recs).item() == 0  # below t: no penalty
    low = BatchActivationLoss(0.5, one_sided=True)(recs)
    assert torch.isclose(low, BatchActivationLoss(0.5)(recs))  # above t: quadratic
    # two-sided pulls a rate below t back up, one-sided does not
    assert BatchActivationLoss(0.8)(recs).item() > 0


def test_flops_loss_value_and_gradient():
    f1 = torch.tensor([60., 100.], requires_grad=True)
    f2 = torch.tensor([10., 30.], requires_grad=True)
    recs = records(torch.ones(2, 1), torch.ones(2, 1), f1, f2)
    loss = FLOPsActivationLoss(target=0.5)(recs)
    ratio = (60 + 100 + 10 + 30) / 2 / 150
    assert torch.isclose(loss, torch.tensor((ratio - 0.5) ** 2))
    loss.backward()
    assert torch.allclose(f1.grad, torch.full((2,), 2 * (ratio - 0.5) / (2 * 150)))


def test_registered_target_attribute_and_errors():
    loss = MODELS.build(dict(type='FLOPsActivationLoss', target=0.4))
    assert isinstance(loss, FLOPsActivationLoss) and loss.target == 0.4
    loss.target = 0.3  # what the annealing hook does
    assert loss.target == 0.3
    with pytest.raises(ValueError, match=r'target activation rate must be a number in \[0, 1\]'):
        loss.target = 1.5
    with pytest.raises(ValueError, match='loss_weight'):
        BatchActivationLoss(loss_weight=-1)
    with pytest.raises(ValueError, match='no gate records'):
        BatchActivationLoss()([])
