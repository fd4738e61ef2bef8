"""The backbone contract, once, for every backbone mmmod registers (``backbones.__all__``).

What mmpretrain's backbones promise (``ResNet``, ``MobileNetV2``, ``VGG``, ``DenseNet``:
``out_indices``, ``frozen_stages``, ``norm_eval``, tuple output, freezing re-applied in
``train()``), checked from that spec and against upstream's own ResNet / MobileNetV2 / VGG /
DenseNet of the same depth / arch, not against mmmod's code:

- a training step gives every trainable parameter a finite, not identically zero gradient, and
  finite outputs;
- ``out_indices`` gives a tuple of that many outputs, shaped as upstream's outputs;
- ``frozen_stages=k`` freezes the stem and stages 1..k (no ``requires_grad``, no gradient, norms
  in eval mode even after ``train()``) and nothing else;
- ``norm_eval=True`` keeps every norm in eval mode after ``train()`` (running statistics
  unchanged by a training forward);
- every state-dict key of upstream's backbone exists with its shape, except the parts a method's
  docstring says it replaces (``replaced``), or whose shapes it says shrink (``reshaped``:
  same name, no dimension larger than upstream's).

What differs per backbone is data in ``ADAPTERS``, per upstream family (its stem and stage
module names, its outputs) data in ``FAMILIES``, not branches in the tests.
"""
import contextlib
import functools
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import pytest
import torch
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm
from mmpretrain.models.backbones import VGG, DenseNet, MobileNetV2, ResNet, ResNetV1c

from mmmod.analysis.pruning import bandit_channel_cfg, gated_channel_cfg
from mmmod.models import backbones

BATCH, SIZE = 2, 32
FROZEN_STAGES = 2
RESNET_OUT = (0, 1, 2, 3)
MOBILENET_V2_OUT = tuple(range(8))  # the 7 table rows and conv2 (index 7)
VGG_OUT = tuple(range(5))  # the 5 stages (each ends with its max pool)
DENSENET_OUT = (0, 1, 2)  # the stages of DENSENET below (each ends with its transition)
# a second, sparse choice: the outputs must be the chosen ones, in order
OUT_INDICES = dict(resnet=[RESNET_OUT, (1, 3)], mobilenet_v2=[MOBILENET_V2_OUT, (2, 4, 7)],
                   vgg=[VGG_OUT, (1, 3, 4)], densenet=[DENSENET_OUT, (0, 2)])


@dataclass(frozen=True)
class Family:
    """Module names of an upstream backbone's parts, read from the reference instance, as its
    ``_freeze_stages`` freezes them."""
    stem: Callable[[torch.nn.Module], Tuple[str, ...]]  # upstream -> the stem's modules
    stage: Callable[[torch.nn.Module, int], Tuple[str, ...]]  # upstream, i (1-based) -> stage i
    # output i's stride where the spec states one (``None``: only upstream's shapes compared)
    stride: Optional[Callable[[int], int]] = None


FAMILIES = dict(
    # ResNet: ``stem`` (deep stem) or ``conv1`` + ``bn1``, stages ``layer<i>``
    resnet=Family(lambda up: ('stem', ) if up.deep_stem else ('conv1', up.norm1_name),
                  lambda up, i: (f'layer{i}', ), stride=lambda i: 2**(i + 2)),
    mobilenet_v2=Family(lambda up: ('conv1', ), lambda up, i: (f'layer{i}', )),
    # VGG: no stem; stage i is ``features[j]`` for j in ``range_sub_modules[i - 1]``
    vgg=Family(lambda up: (),
               lambda up, i: tuple(f'{up.module_name}.{j}'
                                   for j in range(*up.range_sub_modules[i - 1])),
               stride=lambda i: 2**(i + 1)),
    # DenseNet: ``stem``; stage i is ``stages[i - 1]`` with its ``transitions[i - 1]``
    densenet=Family(lambda up: ('stem', ),
                    lambda up, i: (f'stages.{i - 1}', f'transitions.{i - 1}')),
)


@contextlib.contextmanager
def no_step_hook(model):
    yield


@contextlib.contextmanager
def bandit_step(model):
    """What ChannelBanditHook does around a training step: select the step's channels, then
    observe the saliencies backward left."""
    model.begin_bandit_step()
    yield
    model.end_bandit_step()


# Pruned backbones are built from a channel config exported from a freshly built
# data-independent gated network (its gates start ~98% on, so every channel is kept and the
# shapes are upstream's).
@functools.lru_cache(maxsize=None)
def _channels(gated: str, **kwargs):
    return gated_channel_cfg(getattr(backbones, gated)(gate_type='independent', **kwargs))


# Pruned hosts of dynamic channel execution are built from the channel config of a random
# fixed topology of their bandit host (``ADAPTERS[bandit]``'s settings): channels removed, the
# convs and norms shrink (``reshaped``).
@functools.lru_cache(maxsize=None)
def _bandit_channels(bandit: str):
    return bandit_channel_cfg(build(bandit), by='random')


@dataclass
class Adapter:
    """How to build a backbone small, which upstream class it follows and what it documents."""
    family: str  # a key of ``FAMILIES``: the upstream stem / stage names
    cfg: Callable[[], dict]  # small settings (a function: channel configs are built lazily)
    reference: Callable[..., torch.nn.Module]  # upstream backbone of the same depth / arch
    reference_cfg: dict = field(default_factory=dict)
    step: Callable = no_step_hook  # context manager around a training step
    # upstream state-dict keys the method documents it replaces: (regex, where it says so)
    replaced: Optional[Tuple[str, str]] = None
    # upstream state-dict keys, still there, whose shapes it documents shrink: (regex, where)
    reshaped: Optional[Tuple[str, str]] = None
    xfail: dict = field(default_factory=dict)  # check -> the bug it shows (see ``check``)


R18, R50 = dict(depth=18), dict(depth=50)
# MoD: blocks 1, 3, 5, ... of every stage (default ``mod_pattern='alternate'``) are MoDBlocks
# replacing the whole block (resnet_mod.py / mobilenet_v2_mod.py module docstrings).
MOD_BLOCKS = (r'^layer\d+\.\d*[13579]\.',
              'MoD: blocks 1, 3, ... of a stage become MoDBlocks (module docstring)')
PIX_SQUEEZE = (r'^layer\d+\.\d+\.(conv1|bn1)\.',
               'PiX replaces conv1 + norm1 of every bottleneck (resnet_pix.py docstring)')
# the configs' VGG-19, small: VGG-11 with BN, bias-free convs (pruned_vgg.py module docstring)
VGG11 = dict(depth=11, norm_cfg=dict(type='BN'), conv_cfg=dict(type='BiasFreeConv2d'))
DENSENET = dict(arch=dict(growth_rate=4, depths=[2, 1, 2], init_channels=8))
PRUNED_VGG_SHRINK = (r'^features\.\d+\.(conv|bn)\.(weight|bias|running_mean|running_var)$',
                     'PrunedVGG docstring: only the shapes of the convs and norms shrink')
PRUNED_DENSENET_SHRINK = (r'\.(weight|bias|running_mean|running_var)$',
                          'PrunedDenseNet docstring: the convs and norms shrink to the kept '
                          'channels')
# mmpretrain 1.2.0's DenseNet (the reference) leaves these promises out; its hosts follow it
DENSENET_GAPS = dict(
    frozen_stem="upstream DenseNet's frozen_stages freezes stages + transitions, never the stem",
    norm_eval="upstream DenseNet takes no norm_eval")

ADAPTERS = {
    'ResNetMoD': Adapter('resnet', lambda: R18, ResNet, R18, replaced=MOD_BLOCKS),
    'ResNetV1cMoD': Adapter('resnet', lambda: R18, ResNetV1c, R18, replaced=MOD_BLOCKS),
    'MobileNetV2MoD': Adapter('mobilenet_v2', lambda: dict(arch='MoD'), MobileNetV2,
                              replaced=MOD_BLOCKS),
    'ResNetPiX': Adapter('resnet', lambda: R50, ResNet, R50, replaced=PIX_SQUEEZE),
    'ResNetV1cPiX': Adapter('resnet', lambda: R50, ResNetV1c, R50, replaced=PIX_SQUEEZE),
    'GatedResNet': Adapter('resnet', lambda: R18, ResNet, R18),
    'GatedResNetV1c': Adapter('resnet', lambda: R18, ResNetV1c, R18),
    'GatedMobileNetV2': Adapter('mobilenet_v2', dict, MobileNetV2),
    'PrunedResNet': Adapter('resnet', lambda: dict(R18, channel_cfg=_channels('GatedResNet',
                                                                              depth=18)),
                            ResNet, R18),
    'PrunedResNetV1c': Adapter('resnet', lambda: dict(R18, channel_cfg=_channels(
        'GatedResNetV1c', depth=18)), ResNetV1c, R18),
    'PrunedMobileNetV2': Adapter('mobilenet_v2',
                                 lambda: dict(channel_cfg=_channels('GatedMobileNetV2')),
                                 MobileNetV2),
    'BanditResNet': Adapter('resnet', lambda: R18, ResNet, R18, step=bandit_step),
    'BanditVGG': Adapter('vgg', lambda: VGG11, VGG, VGG11, step=bandit_step),
    'PrunedVGG': Adapter('vgg', lambda: dict(VGG11, channel_cfg=_bandit_channels('BanditVGG')),
                         VGG, VGG11, reshaped=PRUNED_VGG_SHRINK),
    'BanditDenseNet': Adapter('densenet', lambda: DENSENET, DenseNet, DENSENET,
                              step=bandit_step, xfail=DENSENET_GAPS),
    'PrunedDenseNet': Adapter('densenet', lambda: dict(DENSENET, channel_cfg=_bandit_channels(
        'BanditDenseNet')), DenseNet, DENSENET, reshaped=PRUNED_DENSENET_SHRINK,
                              xfail=DENSENET_GAPS),
}
NAMES = sorted(ADAPTERS)


def build(name, **kwargs):
    """The backbone through mmengine's root registry, as a config names it."""
    return ROOT_MODELS.build(dict(type=name, **ADAPTERS[name].cfg(), **kwargs))


def check(name, key, failures, what):
    """``assert not failures``, or xfail where ``ADAPTERS[name].xfail[key]`` names the bug; a
    listed bug that no longer shows fails, so the table stays true."""
    reason = ADAPTERS[name].xfail.get(key)
    if failures and reason:
        pytest.xfail(reason)
    assert not failures, f'{what}: {failures[:10]}'
    assert not reason, f'fixed, remove ADAPTERS[{name!r}].xfail[{key!r}]: {reason}'


def stem_prefixes(upstream, family):
    """Module names of the stem, read from ``upstream`` (the reference backbone)."""
    return FAMILIES[family].stem(upstream)


def frozen_prefixes(upstream, family, frozen_stages):
    return stem_prefixes(upstream, family) + tuple(
        p for i in range(1, frozen_stages + 1) for p in FAMILIES[family].stage(upstream, i))


def under(name, prefixes):
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def batch(seed=0):
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def training_step(name, model, x):
    """Forward + backward of a loss that reads every output (a random projection, so no
    output's gradient is a constant that a norm would cancel); returns the outputs."""
    g = torch.Generator().manual_seed(1)
    with ADAPTERS[name].step(model):
        outs = model(x)
        loss = sum((o * torch.randn(o.shape, generator=g)).mean() for o in outs)
        loss.backward()
    return outs


def test_every_registered_backbone_has_an_adapter():
    assert set(ADAPTERS) == set(backbones.__all__)


@pytest.mark.parametrize('name', NAMES)
def test_training_step_gives_every_parameter_a_finite_gradient(name):
    torch.manual_seed(0)
    model = build(name, out_indices=OUT_INDICES[ADAPTERS[name].family][0])
    model.train()
    outs = training_step(name, model, batch())
    assert isinstance(outs, tuple)
    assert all(torch.isfinite(o).all() for o in outs)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f'no gradient: {missing[:10]}'
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not bad, f'NaN/Inf gradient: {bad[:10]}'
    zero = [n for n, p in params if not p.grad.any()]
    assert not zero, f'gradient identically zero: {zero[:10]}'


@pytest.mark.parametrize('which', [0, 1], ids=['all', 'sparse'])
@pytest.mark.parametrize('name', NAMES)
def test_out_indices_give_upstreams_outputs(name, which):
    adapter = ADAPTERS[name]
    out_indices = OUT_INDICES[adapter.family][which]
    x = batch()
    reference = adapter.reference(out_indices=out_indices, **adapter.reference_cfg)
    model = build(name, out_indices=out_indices)
    reference.eval()  # (upstream's train() returns None, so eval() does too: no chaining)
    model.eval()
    with torch.no_grad():
        expected = reference(x)
        outs = model(x)
    assert isinstance(outs, tuple) and len(outs) == len(out_indices)
    assert [tuple(o.shape) for o in outs] == [tuple(e.shape) for e in expected]
    stride = FAMILIES[adapter.family].stride  # (N, C_i, H / s_i, W / s_i)
    if stride:
        assert [o.shape[2:] for o in outs] == [(SIZE // stride(i), ) * 2 for i in out_indices]


@pytest.mark.parametrize('name', NAMES)
def test_frozen_stages_freeze_the_stem_and_the_first_stages(name):
    adapter = ADAPTERS[name]
    upstream = adapter.reference(**adapter.reference_cfg)
    model = build(name, frozen_stages=FROZEN_STAGES)
    model.train()
    frozen = frozen_prefixes(upstream, adapter.family, FROZEN_STAGES)
    stem = stem_prefixes(upstream, adapter.family)
    params = dict(model.named_parameters())
    frozen_params = [n for n in params if under(n, frozen)]
    stage_params = [n for n in frozen_params if not under(n, stem)]
    assert stage_params and len(frozen_params) < len(params)
    assert [n for n in stage_params if params[n].requires_grad] == []
    assert [n for n in params if not under(n, frozen) and not params[n].requires_grad] == []
    norms = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    assert [n for n, m in norms.items() if not under(n, frozen) and not m.training] == []
    assert [n for n, m in norms.items()
            if under(n, frozen) and not under(n, stem) and m.training] == []
    # a training step leaves the frozen parameters without gradient, the others with one
    training_step(name, model, batch())
    assert [n for n in stage_params if params[n].grad is not None] == []
    assert [n for n, p in params.items() if not under(n, frozen) and p.grad is None] == []
    check(name, 'frozen_stem',
          [n for n in frozen_params if under(n, stem)
           and (params[n].requires_grad or params[n].grad is not None)],
          'stem parameters trainable under frozen_stages')
    check(name, 'frozen_stem_norm',
          [n for n, m in norms.items() if under(n, stem) and m.training],
          'stem norms in training mode under frozen_stages')


@pytest.mark.parametrize('name', NAMES)
def test_norm_eval_keeps_every_norm_in_eval_mode(name):
    try:
        model, refused = build(name, norm_eval=True), []
    except TypeError as e:  # an upstream without the argument (its hosts pass **kwargs on)
        if 'norm_eval' not in str(e):
            raise
        model, refused = None, [str(e)]
    check(name, 'norm_eval', refused, 'norm_eval=True refused')
    model.train()
    norms = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    assert norms
    assert [n for n, m in norms.items() if m.training] == []
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in norms.items()}
    training_step(name, model, batch())
    changed = [n for n, m in norms.items()
               if not (torch.equal(m.running_mean, before[n][0])
                       and torch.equal(m.running_var, before[n][1]))]
    assert changed == [], 'running statistics moved under norm_eval'


@pytest.mark.parametrize('name', NAMES)
def test_state_dict_names_of_the_standard_parts_are_upstreams(name):
    adapter = ADAPTERS[name]
    expected = adapter.reference(**adapter.reference_cfg).state_dict()
    got = build(name).state_dict()
    pattern = re.compile(adapter.replaced[0]) if adapter.replaced else None
    replaced = [k for k in expected if pattern and pattern.search(k)]
    if pattern:  # a documented exception that matches nothing documents nothing
        assert replaced, f'{adapter.replaced[1]}: no upstream key matches {pattern.pattern}'
    standard = [k for k in expected if k not in replaced]
    missing = [k for k in standard if k not in got]
    assert missing == [], f'upstream keys missing: {missing[:10]}'
    shrink = re.compile(adapter.reshaped[0]) if adapter.reshaped else None
    shrunk = [k for k in standard if shrink and shrink.search(k)]
    if shrink:  # (the same: a documented exception must match something)
        assert shrunk, f'{adapter.reshaped[1]}: no upstream key matches {shrink.pattern}'
    grown = [(k, tuple(expected[k].shape), tuple(got[k].shape)) for k in shrunk
             if got[k].dim() != expected[k].dim()
             or any(g > e for g, e in zip(got[k].shape, expected[k].shape))]
    assert grown == [], f'{adapter.reshaped[1]}, but these do not: {grown[:10]}'
    reshaped = [(k, tuple(expected[k].shape), tuple(got[k].shape)) for k in standard
                if k not in shrunk and got[k].shape != expected[k].shape]
    assert reshaped == [], f'upstream keys with another shape: {reshaped[:10]}'
