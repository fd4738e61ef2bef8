"""The channel-structure substrate (mmmod/models/layers/channel_structure.py) and the state dicts
that must survive it: blocks and backbones built from a seed load the golden state dicts the code
before the substrate wrote, and compute the same outputs.

The fixtures were written by this file's ``__main__`` with the code before the change
(``PYTHONPATH=<old checkout> python tests/test_models/test_layers/test_channel_structure.py``);
regenerate them only on purpose (a change of the numbers is a change of the models):

- ``channel_structure_v1.pth``: tiny blocks and backbones of every family that walks the
  structure (gated, pruned, PiX), their state dicts, an input and the eval outputs;
- ``channel_structure_v1_keys.json``: state-dict key -> shape of the full-size GatedResNet-50,
  GatedMobileNetV2, their exports PrunedResNet-50 / PrunedMobileNetV2, and ResNetPiX-50.
"""
import hashlib
import json
import os.path as osp

import pytest
import torch
import torch.nn as nn

from mmmod.analysis.pruning import prune_model
from mmmod.models.backbones import (GatedMobileNetV2, GatedResNet, PrunedMobileNetV2,
                                    PrunedResNet, ResNetPiX)
from mmmod.models.backbones.gated_mobilenet_v2 import GatedInvertedResidual
from mmmod.models.backbones.pruned_mobilenet_v2 import PrunedInvertedResidual
from mmmod.models.layers.gumbel_gate import iter_gated_blocks

DATA = osp.join(osp.dirname(osp.dirname(__file__)), 'fixtures')
FIXTURE = osp.join(DATA, 'channel_structure_v1.pth')
KEYS_FIXTURE = osp.join(DATA, 'channel_structure_v1_keys.json')


def make_randomize(randomize_norms):
    """``randomize(model, seed)``: random BN affine + statistics (``randomize_norms``, the
    shared helper of tests/conftest.py) and gate logits / biases (about half the gates off)."""
    def randomize(model: nn.Module, seed: int) -> nn.Module:
        g = torch.Generator().manual_seed(seed)
        randomize_norms(model, g)
        with torch.no_grad():
            for _, block in iter_gated_blocks(model):
                if block.gate is None:
                    continue
                logits = block.gate.logits if hasattr(block.gate, 'logits') else \
                    block.gate.fc2.bias.view(-1, 2)  # (G, 2) off, on
                logits[:, 0] = 0
                logits[:, 1] = torch.randn(logits.shape[0], generator=g)
        return model
    return randomize


@pytest.fixture(scope='module')
def randomize(randomize_norms):
    return make_randomize(randomize_norms)


TINY_R = dict(stem_channels=8, base_channels=8, num_stages=2, strides=(1, 2), dilations=(1, 1),
              out_indices=(0, 1), gate_hidden=2)
GRAN_BASIC = dict(input=2, conv1=2, conv2=2, downsample=2)
GRAN_BOTTLENECK = dict(input=4, conv1=2, conv2=2, conv3=4, downsample=4)


def _gated_r18(gate_type):
    return GatedResNet(depth=18, gate_type=gate_type, granularity=GRAN_BASIC, avg_down=True,
                       gate_loss=None, **TINY_R)


def _gated_r50(gate_type):
    return GatedResNet(depth=50, gate_type=gate_type, granularity=GRAN_BOTTLENECK,
                       style='caffe', gate_loss=None, **dict(TINY_R, base_channels=4))


def _gated_irs():
    """t = 1 residual, t = 6 residual, t = 6 stride 2 (no residual) inverted residuals."""
    gran = dict(input=2, expand=4, output=2)
    return nn.Sequential(
        GatedInvertedResidual(8, 8, 1, 1, granularity=gran, gate_hidden=2),
        GatedInvertedResidual(8, 8, 1, 6, granularity=gran, gate_hidden=2),
        GatedInvertedResidual(8, 12, 2, 6, granularity=gran, gate_hidden=2))


def _pruned_irs():
    """Pruned inverted residuals with partial and fully closed positions."""
    r = list(range(48))
    blocks = [
        (8, 8, 1, 1, dict(expand=[0, 3, 5], output=[1, 2, 7])),
        (8, 8, 1, 6, dict(input=[0, 3], expand=r[::3], output=[1, 6])),
        (8, 8, 1, 6, dict(input=[], expand=r[1::4], output=[0, 1, 2, 3, 4, 5, 6, 7])),
        (8, 8, 1, 6, dict(input=[2, 4, 5], expand=[], output=[3])),
        (8, 8, 1, 6, dict(input=[1], expand=[2], output=[])),
        (8, 12, 2, 6, dict(input=[0, 1, 2, 3, 4, 5, 6, 7], expand=r[::2], output=[0, 5, 11])),
    ]
    return nn.Sequential(*(PrunedInvertedResidual(i, o, s, t, kept=k, name=f'b{n}')
                           for n, (i, o, s, t, k) in enumerate(blocks)))


def tiny_cases(randomize):
    """name -> (module in eval mode, input); every module from its own seed."""
    cases = {}
    torch.manual_seed(0)
    cases['gated_r18_dependent'] = (randomize(_gated_r18('dependent'), 0), (1, 3, 12, 12))
    torch.manual_seed(1)
    cases['gated_r50_independent'] = (randomize(_gated_r50('independent'), 1), (1, 3, 12, 12))
    torch.manual_seed(2)
    cases['gated_inverted_residuals'] = (randomize(_gated_irs(), 2), (1, 8, 7, 7))
    torch.manual_seed(3)
    gated = randomize(_gated_r18('independent'), 3).eval()
    cases['pruned_r18'] = (prune_model(gated, dict(
        type='GatedResNet', depth=18, avg_down=True, **TINY_R))[0], (1, 3, 12, 12))
    torch.manual_seed(4)
    gated = randomize(_gated_r50('independent'), 4).eval()
    cases['pruned_r50'] = (prune_model(gated, dict(
        type='GatedResNet', depth=50, style='caffe', **dict(TINY_R, base_channels=4)))[0],
        (1, 3, 12, 12))
    torch.manual_seed(5)
    cases['pruned_inverted_residuals'] = (randomize(_pruned_irs(), 5), (1, 8, 7, 7))
    torch.manual_seed(6)
    cases['pix_r50'] = (randomize(ResNetPiX(depth=50, stem_channels=4, base_channels=4,
                                            num_stages=2, strides=(1, 2), dilations=(1, 1),
                                            out_indices=(0, 1), style='caffe'), 6), (1, 3, 12, 12))
    return {name: (module.eval(), shape) for name, (module, shape) in cases.items()}


def full_size_models(randomize):
    """The full-size models whose state-dict names and shapes are API."""
    torch.manual_seed(0)
    gated_r50 = randomize(GatedResNet(depth=50, gate_type='independent'), 0).eval()
    gated_mbv2 = randomize(GatedMobileNetV2(gate_type='independent'), 1).eval()
    return dict(
        gated_resnet50=GatedResNet(depth=50),
        gated_mobilenet_v2=GatedMobileNetV2(),
        pruned_resnet50=prune_model(gated_r50, dict(type='GatedResNet', depth=50))[0],
        pruned_mobilenet_v2=prune_model(gated_mbv2, dict(type='GatedMobileNetV2'))[0],
        resnet_pix50=ResNetPiX(depth=50))


def _outputs(module, x):
    with torch.no_grad():
        out = module(x)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _pack(state_dict):
    """A state dict as (keys, shapes, float16 values flat, integer values flat): a few
    records instead of one per tensor keep the fixture small."""
    keys, shapes = list(state_dict), [list(v.shape) for v in state_dict.values()]
    floats = [v.reshape(-1) for v in state_dict.values() if v.is_floating_point()]
    ints = [v.reshape(-1) for v in state_dict.values() if not v.is_floating_point()]
    return dict(keys=keys, shapes=shapes, floats=torch.cat(floats).half(),
                ints=torch.cat(ints) if ints else torch.zeros(0, dtype=torch.long))


def _unpack(packed, like):
    """The state dict of :func:`_pack`, in the dtypes of ``like`` (a module's state dict)."""
    out, f, i = {}, 0, 0
    for key, shape in zip(packed['keys'], packed['shapes']):
        n = int(torch.Size(shape).numel())
        if like[key].is_floating_point():
            out[key], f = packed['floats'][f:f + n].float().view(shape), f + n
        else:
            out[key], i = packed['ints'][i:i + n].view(shape).to(like[key].dtype), i + n
    return out


def _cfg_digest(channel_cfg):
    return hashlib.sha256(json.dumps(channel_cfg, sort_keys=True).encode()).hexdigest()


def write_fixtures(randomize):
    golden = {}
    for name, (module, shape) in tiny_cases(randomize).items():
        # float16 weights, outputs computed from them: the fixture holds what it checks
        module.load_state_dict(_unpack(_pack(module.state_dict()), module.state_dict()))
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
        golden[name] = dict(state_dict=_pack(module.state_dict()), input=x,
                            outputs=_outputs(module, x),
                            channel_cfg=getattr(module, 'channel_cfg', None))
    torch.save(golden, FIXTURE)
    models = full_size_models(randomize)
    keys = {name: {k: list(v.shape) for k, v in model.state_dict().items()}
            for name, model in models.items()}
    keys['pruned_channel_cfg_sha256'] = {name: _cfg_digest(model.channel_cfg)
                                         for name, model in models.items()
                                         if name.startswith('pruned')}
    with open(KEYS_FIXTURE, 'w') as f:
        json.dump(keys, f, indent=0)


@pytest.fixture(scope='module')
def golden():
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize('name', ['gated_r18_dependent', 'gated_r50_independent',
                                  'gated_inverted_residuals', 'pruned_r18', 'pruned_r50',
                                  'pruned_inverted_residuals', 'pix_r50'])
def test_golden_state_dicts_load_and_compute_the_same(golden, randomize, name):
    """A state dict written before the substrate loads strictly into the module built today
    from the same seed, and gives the same eval outputs."""
    module, _ = tiny_cases(randomize)[name]
    saved = golden[name]
    if saved['channel_cfg'] is not None:  # the export is what the old code exported
        assert module.channel_cfg == saved['channel_cfg']
    packed = saved['state_dict']
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == \
        {k: tuple(s) for k, s in zip(packed['keys'], packed['shapes'])}
    module.load_state_dict(_unpack(packed, module.state_dict()), strict=True)
    outs = _outputs(module, saved['input'])
    assert len(outs) == len(saved['outputs'])
    for got, expected in zip(outs, saved['outputs']):
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_full_size_state_dict_names_and_shapes_are_unchanged(randomize):
    """Key -> shape of the full-size gated, pruned (exported) and PiX backbones, as listed in
    the JSON fixture written before the substrate; the exports' channel configs too (their
    SHA-256)."""
    with open(KEYS_FIXTURE) as f:
        expected = json.load(f)
    models = full_size_models(randomize)
    for name, model in models.items():
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected[name], name
    for name, digest in expected['pruned_channel_cfg_sha256'].items():
        assert _cfg_digest(models[name].channel_cfg) == digest, name


if __name__ == '__main__':
    # outside pytest: the shared norm helper straight from tests/conftest.py
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        '_tests_conftest', osp.join(osp.dirname(osp.dirname(DATA)), 'conftest.py'))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    write_fixtures(make_randomize(conftest.randomize_norm_stats))
