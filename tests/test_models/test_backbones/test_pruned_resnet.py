"""PrunedResNet / PrunedResNetV1c at pruned widths: what the contract test (test_contract.py,
built from an export that keeps every channel) does not reach. An export that drops about half
the gated channels trains: narrower convs, the residual stream and the stage outputs at ResNet's
widths, a finite gradient for every parameter. (Export equivalence and channel-config errors:
tests/test_analysis/test_pruning.py.)"""
import pytest
import torch
from mmengine.registry import MODELS
from mmpretrain.models.backbones import ResNet, ResNetV1c

from mmmod.analysis.pruning import gated_channel_cfg

OUT = (0, 1, 2, 3)


def half_pruned_channels(gated_type, depth, seed=0):
    """The export of a data-independent gated ResNet whose gate logits are random (about half
    the learned gates off)."""
    gated = MODELS.build(dict(type=gated_type, depth=depth, gate_type='independent'))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in gated.modules():
            if hasattr(m, 'logits') and isinstance(m.logits, torch.Tensor):
                m.logits.copy_(torch.randn(m.logits.shape, generator=g))
    return gated_channel_cfg(gated)


@pytest.mark.parametrize('name,gated_type,reference,depth', [
    ('PrunedResNet', 'GatedResNet', ResNet, 18),
    ('PrunedResNet', 'GatedResNet', ResNet, 50),
    ('PrunedResNetV1c', 'GatedResNetV1c', ResNetV1c, 18),
])
def test_a_pruned_export_trains_at_its_widths(name, gated_type, reference, depth):
    model = MODELS.build(dict(type=name, depth=depth, out_indices=OUT,
                              channel_cfg=half_pruned_channels(gated_type, depth)))
    upstream = reference(depth=depth, out_indices=OUT)
    full = upstream.state_dict()
    narrower = [k for k, v in model.state_dict().items() if v.shape != full[k].shape]
    assert len(narrower) > len(full) // 4  # really pruned
    assert set(model.state_dict()) == set(full)  # names are ResNet's

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.train()
    outs = model(x)
    upstream.eval()
    with torch.no_grad():
        expected = upstream(x)
    assert [o.shape for o in outs] == [e.shape for e in expected]  # the stream keeps its width
    sum((o * torch.randn_like(o)).mean() for o in outs).backward()
    assert all(torch.isfinite(o).all() for o in outs)
    params = dict(model.named_parameters())
    assert [n for n, p in params.items() if p.grad is None] == []
    assert [n for n, p in params.items() if not torch.isfinite(p.grad).all()] == []
