"""PrunedMobileNetV2 at pruned widths: what the contract test (test_contract.py, built from an
export that keeps every channel) does not reach. An export that drops about half the gated
channels, with residual blocks closed entirely, trains: narrower convs, the stage outputs at
MobileNetV2's widths, a finite gradient for every parameter. (Export equivalence and channel
errors: tests/test_analysis/test_pruning.py.)"""
import torch
from mmengine.registry import MODELS
from mmpretrain.models.backbones import MobileNetV2

from mmmod.analysis.pruning import gated_channel_cfg

OUT = tuple(range(8))  # the 7 table rows and conv2
# residual blocks whose output gates all close: they become the identity (no parameters)
CLOSED = ('layer3.1', 'layer6.2')


def half_pruned_channels(seed=0):
    """The export of a data-independent GatedMobileNetV2 with random gate logits (about half
    the learned gates off) and the output gates of the ``CLOSED`` blocks all off."""
    gated = MODELS.build(dict(type='GatedMobileNetV2', gate_type='independent'))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in gated.modules():
            if hasattr(m, 'logits') and isinstance(m.logits, torch.Tensor):
                m.logits.copy_(torch.randn(m.logits.shape, generator=g))
    cfg = gated_channel_cfg(gated)
    for name in CLOSED:
        cfg['blocks'][name]['output'] = []
    return cfg


def test_a_pruned_export_trains_at_its_widths():
    model = MODELS.build(dict(type='PrunedMobileNetV2', out_indices=OUT,
                              channel_cfg=half_pruned_channels()))
    upstream = MobileNetV2(out_indices=OUT)
    full = upstream.state_dict()
    state = model.state_dict()
    assert not any(k.startswith(CLOSED) for k in state)  # closed blocks hold nothing
    narrower = [k for k, v in state.items() if v.shape != full[k].shape]
    assert len(narrower) > len(full) // 4  # really pruned
    assert set(state) <= set(full)  # names are MobileNetV2's

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.train()
    outs = model(x)
    upstream.eval()
    with torch.no_grad():
        expected = upstream(x)
    assert [o.shape for o in outs] == [e.shape for e in expected]
    sum((o * torch.randn_like(o)).mean() for o in outs).backward()
    assert all(torch.isfinite(o).all() for o in outs)
    params = dict(model.named_parameters())
    assert [n for n, p in params.items() if p.grad is None] == []
    assert [n for n, p in params.items() if not torch.isfinite(p.grad).all()] == []
