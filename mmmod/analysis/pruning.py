"""Export a data-independent GatedResNet / GatedMobileNetV2, or a channel-bandit backbone, as a
physically smaller network (``PrunedResNet`` / ``PrunedMobileNetV2`` / ...).

Data-independent gates (Herrmann et al., pruning) are constants once thresholded: gate ``i`` is
on iff ``softmax(logits_i)[on] > tau``. :func:`gated_channel_cfg` turns those constants into the
kept channel indices of every gated position; :func:`prune_model` swaps the gated backbone of a
model for a ``PrunedResNet`` with the surviving filters' weights (its outputs equal the
thresholded gated model's); :func:`export_pruned` does that for a config + checkpoint and writes
``<name>_pruned.pth`` (a normal mmengine checkpoint) and ``<name>_channels.json`` (what a
config's ``backbone=dict(type='PrunedResNet', channel_cfg=...)`` reads).

Dynamic channel execution (Spasov & Lio, Alg. 1 steps 12-14) ends the same way: a
channel-bandit backbone (``BanditResNet``, ...) fixes its topology by mean saliency
(:func:`bandit_channel_cfg`; ``by='random'`` for Fig. 3's baseline) and the compact network of
its ``pruned_type`` gets the active channels' weights, to be fine-tuned with a fresh optimizer.

Data-dependent gates change with the input, so no static network computes them; for those see
:mod:`mmmod.models.layers.active_channels` (batch-1 inference on the active channels only).
"""
import copy
import json
import os
import os.path as osp
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from mmmod.models.backbones._pruned_utils import CHANNEL_CFG_FORMAT

# GatedResNet arguments that the pruned network does not take.
GATE_KEYS = ('gate_type', 'granularity', 'gate_loss', 'gate_mode', 'gate_tau', 'gate_hidden')
# channel-bandit (dynamic channel execution) arguments that the compact network does not take
BANDIT_KEYS = ('ratio', 'execution', 'freeze_inactive', 'init', 'seed', 'arm_tied')
# gated backbone type -> the type of its export; a channel-bandit backbone names its own
# (``pruned_type``)
PRUNED_TYPES = {'GatedResNet': 'PrunedResNet', 'GatedResNetV1c': 'PrunedResNetV1c',
                'GatedMobileNetV2': 'PrunedMobileNetV2'}


def _bandit_class(kind: str) -> Optional[type]:
    """The registered channel-bandit backbone class called ``kind``, or None."""
    from mmmod.registry import MODELS
    cls = MODELS.get(kind)
    return cls if getattr(cls, 'pruned_type', '') else None


def exportable_types() -> Dict[str, str]:
    """Backbone type -> the type of its export: the gated ones and every registered
    channel-bandit backbone."""
    from mmmod.registry import MODELS
    types = dict(PRUNED_TYPES)
    types.update({name: cls.pruned_type for name, cls in MODELS.module_dict.items()
                  if getattr(cls, 'pruned_type', '')})
    return types


def _check_exportable(backbone: nn.Module) -> None:
    from mmmod.models.backbones import GatedMobileNetV2, GatedResNet
    from mmmod.models.layers.gumbel_gate import iter_gated_blocks
    if getattr(backbone, 'pruned_type', ''):
        return  # a channel bandit: any fixed topology is static
    if not isinstance(backbone, (GatedResNet, GatedMobileNetV2)):
        types = exportable_types()
        raise TypeError(f'only {sorted(types)} backbones can be exported (to '
                        f'{sorted(set(types.values()))}), got {type(backbone).__name__}')
    for name, block in iter_gated_blocks(backbone):
        if block.gate_type != 'independent':
            raise ValueError(
                f'block {name} has data-dependent gates: they change with every input, so no '
                f'static network computes them and they cannot be exported; train with '
                f"gate_type='independent' to prune, or run the dependent model at batch 1 "
                f'with mmmod.models.layers.active_channels.active_channel_inference (only the '
                f'active channels are computed)')


@torch.no_grad()
def gated_channel_cfg(backbone: nn.Module, tau: float = 0.5) -> dict:
    """Kept channel indices of every gated position of a data-independent GatedResNet or
    GatedMobileNetV2.

    The gates are thresholded at ``tau`` exactly as in the model's ``'threshold'`` inference
    mode (each block's own ``sample_block_gates`` runs; the backbone's state is restored).

    Returns:
        dict: ``{"format", "depth" (ResNets), "tau", "blocks": {"layer1.0": {"input": [0, 1,
        ...], ...}}}`` (JSON-serialisable), the ``channel_cfg`` of :class:`PrunedResNet` /
        :class:`PrunedMobileNetV2`.

    Example:
        >>> from mmmod.models.backbones import GatedResNet
        >>> gated = GatedResNet(depth=18, gate_type='independent')
        >>> cfg = gated_channel_cfg(gated)
        >>> sorted(cfg['blocks']['layer2.0']), len(cfg['blocks']['layer2.0']['conv1'])
        (['conv1', 'conv2', 'downsample', 'input'], 128)
    """
    from mmmod.models.layers.gumbel_gate import check_gate_mode, iter_gated_blocks
    _check_exportable(backbone)
    check_gate_mode('threshold', tau)
    blocks = {}
    for name, block in iter_gated_blocks(backbone):
        saved = (block.training, block.gate_mode, block.gate_tau, block.last_gates,
                 block.last_hw)
        block.training = False  # only sample_block_gates reads it here
        block.set_gate_mode('threshold', tau)
        try:
            # independent gates ignore the input; a 1x1 one gives the block its C_in
            z = block.sample_block_gates(torch.zeros(1, block.in_channels, 1, 1))
            blocks[name] = {p: block.channel_gates[p].channel_mask(z[p])[0].nonzero()[:, 0].tolist()
                            for p in block.gate_positions}  # (1, groups) -> (C,) -> kept
        finally:
            (block.training, block.gate_mode, block.gate_tau, block.last_gates,
             block.last_hw) = saved
    out = dict(format=CHANNEL_CFG_FORMAT, tau=tau, blocks=blocks)
    if hasattr(backbone, 'depth'):  # ResNets: checked by PrunedResNet
        out['depth'] = backbone.depth
    return out


@torch.no_grad()
def bandit_channel_cfg(backbone: nn.Module, by: str = 'mean') -> dict:
    """Kept channel indices of a channel-bandit backbone's fixed topology (Alg. 1 step 12):
    the top arms by mean saliency, or ``by='random'`` (the paper's Fig. 3 baseline).

    Returns:
        dict: the host's ``pruned_channel_cfg`` (``{"blocks": ..., ...}``) with ``format``,
        ``selection``, ``ratio`` and the ``bandit_step`` it was fixed at.

    Example:
        >>> from mmmod.models.backbones import BanditResNet
        >>> model = BanditResNet(depth=18, ratio=0.5)
        >>> cfg = bandit_channel_cfg(model, by='random')  # seeded: (seed, step) of the bandit
        >>> cfg['selection'], len(cfg['blocks']), len(cfg['blocks']['layer1.0']['conv1'])
        ('random', 8, 31)
    """
    from mmmod.models.layers.channel_bandit import FIXED_SELECTIONS
    if by not in FIXED_SELECTIONS:
        raise ValueError(f'a fixed topology is selected by one of {FIXED_SELECTIONS}, '
                         f'got {by!r}')
    step = int(backbone.bandit.step)
    if by == 'mean' and step == 0:
        raise ValueError(
            f'the {type(backbone).__name__} bandit has observed no training step, so every '
            f'mean saliency is 0 and "by mean" would pick at random; export a checkpoint '
            f"trained under ChannelBanditHook, or select by='random' explicitly")
    out = backbone.pruned_channel_cfg(backbone.fixed_masks(by))
    out.update(format=CHANNEL_CFG_FORMAT, selection=by, ratio=backbone.bandit.ratio,
               bandit_step=step)
    return out


def pruned_backbone_cfg(source_cfg: Mapping, channel_cfg: Union[str, Mapping]) -> dict:
    """The pruned backbone config of a gated (``PRUNED_TYPES``) or channel-bandit one: same
    architecture keys, gate / bandit keys dropped, no init_cfg (the weights come from the
    exported checkpoint)."""
    cfg = copy.deepcopy(dict(source_cfg))
    kind = str(cfg.get('type', '')).split('.')[-1]
    bandit = _bandit_class(kind)
    if kind not in PRUNED_TYPES and bandit is None:
        raise TypeError(f'only {sorted(exportable_types())} backbones can be exported, '
                        f'got {kind!r}')
    for key in GATE_KEYS + BANDIT_KEYS + ('init_cfg', 'pretrained', '_delete_'):
        cfg.pop(key, None)
    cfg.update(type=bandit.pruned_type if bandit else PRUNED_TYPES[kind],
               channel_cfg=channel_cfg)
    if kind == 'GatedResNetV1c':  # PrunedResNetV1c sets these itself, as GatedResNetV1c did
        cfg.pop('deep_stem', None)
        cfg.pop('avg_down', None)
    return cfg


def prune_model(model: nn.Module, backbone_cfg: Mapping, tau: float = 0.5, by: str = 'mean'
                ) -> Tuple[nn.Module, dict]:
    """A copy of ``model`` whose data-independent gated ``backbone`` (GatedResNet[V1c],
    GatedMobileNetV2) or channel-bandit backbone (BanditResNet, ...) is replaced by its pruned
    network, weights sliced from the full-width ones.

    Args:
        model: a model with a ``backbone`` attribute (classifier, segmentor, detector) or such
            a backbone itself.
        backbone_cfg: the source backbone's config (its architecture keys are reused).
        tau: gate threshold (gated backbones).
        by: ``'mean'`` or ``'random'``, how a bandit's topology is fixed (bandit backbones).

    Returns:
        (pruned model in eval mode, channel_cfg dict).
    """
    from mmmod.registry import MODELS
    gated = getattr(model, 'backbone', model)
    channel_cfg = bandit_channel_cfg(gated, by) if getattr(gated, 'pruned_type', '') \
        else gated_channel_cfg(gated, tau)
    pruned = MODELS.build(pruned_backbone_cfg(backbone_cfg, channel_cfg))
    pruned.load_state_dict(pruned.state_dict_from_full(gated.state_dict()))
    if gated is model:
        return pruned.eval(), channel_cfg
    model = copy.deepcopy(model)
    model.backbone = pruned
    model.eval()
    return model, channel_cfg


def _params_macs(model: nn.Module, shape, data_samples=None) -> Tuple[int, int]:
    from .complexity import complexity
    result = complexity(model, shape, convention='mmengine', data_samples=data_samples)
    return result['params'], result['macs']


def _check_bandit_state(model: nn.Module, state: Mapping, checkpoint: str) -> None:
    """A bandit backbone's export needs the bandit's state from the checkpoint."""
    prefix = next(name for name, m in model.named_modules() if m is model.backbone.bandit)
    missing = [f'{prefix}.{key}' for key in ('counts', 'means', 'step')
               if f'{prefix}.{key}' not in state]
    if missing:
        raise ValueError(
            f'{checkpoint} holds no channel-bandit state ({", ".join(missing)} missing): the '
            f'export of a {type(model.backbone).__name__} fixes the topology by the mean '
            f'saliencies a dynamic-channel-execution run learned; give the checkpoint of such '
            f'a run (a Bandit* backbone trained under ChannelBanditHook)')


def _baseline_model(model: nn.Module, backbone_cfg: Mapping) -> nn.Module:
    """``model`` with a channel-bandit backbone replaced by the plain full-width network it
    explores (the paper's baseline rows of Table 1)."""
    from mmmod.registry import MODELS
    cfg = pruned_backbone_cfg(backbone_cfg, None)
    cfg.pop('channel_cfg')
    cfg['type'] = type(model.backbone).baseline_type
    baseline = copy.deepcopy(model)
    baseline.backbone = MODELS.build(cfg)
    return baseline.eval()


def export_pruned(config, checkpoint: str, out_dir: str, tau: float = 0.5,
                  shape: Optional[Sequence[int]] = None, by: str = 'mean') -> dict:
    """Export the gated or channel-bandit model of ``config`` + ``checkpoint`` as a pruned one.

    Writes ``out_dir/<config name>_pruned.pth`` (``state_dict`` of the whole model, backbone
    replaced, and ``meta``: the source checkpoint's plus ``pruned``) and
    ``out_dir/<config name>_channels.json`` (``<config name>_random_*`` for a bandit's
    ``by='random'``).

    Returns:
        dict: ``checkpoint``, ``channels`` (paths), ``backbone`` (the pruned backbone config,
        channel_cfg as the JSON path), ``shape`` and ``params`` / ``macs`` (mmengine's
        FlopAnalyzer, 1 MAC = 1 multiply-add) ``before`` and ``after``. ``before`` is the gated
        model (every filter is computed, then masked) or, for a bandit, the full-width
        baseline network (the paper's % of baseline).
    """
    from mmengine.config import Config
    from mmengine.runner.checkpoint import (_load_checkpoint, get_state_dict,
                                            load_state_dict, save_checkpoint, weights_to_cpu)

    from .complexity import _det_data_samples, input_shape_of, model_from_config
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    name = osp.splitext(osp.basename(cfg.filename))[0] if cfg.filename else 'model'
    model = model_from_config(cfg)
    if not hasattr(model, 'backbone'):
        raise TypeError(f'{type(model).__name__} has no backbone to export')
    _check_exportable(model.backbone)
    bandit = bool(getattr(model.backbone, 'pruned_type', ''))
    source = _load_checkpoint(checkpoint, map_location='cpu')
    state = source.get('state_dict', source)
    if bandit:
        _check_bandit_state(model, state, checkpoint)
        name += '_random' if by == 'random' else ''
    load_state_dict(model, state, strict=True)
    model.eval()
    backbone_cfg = cfg.model.backbone.to_dict() if hasattr(cfg.model.backbone, 'to_dict') \
        else dict(cfg.model.backbone)
    pruned, channel_cfg = prune_model(model, backbone_cfg, tau, by)

    os.makedirs(out_dir, exist_ok=True)
    channels_path = osp.join(out_dir, f'{name}_channels.json')
    checkpoint_path = osp.join(out_dir, f'{name}_pruned.pth')
    channel_cfg['source'] = dict(config=cfg.filename, checkpoint=str(checkpoint))
    with open(channels_path, 'w') as f:
        json.dump(channel_cfg, f, indent=1)
    pruned_cfg = pruned_backbone_cfg(backbone_cfg, channels_path)
    meta = dict(source.get('meta') or {})
    meta['pruned'] = dict(source=str(checkpoint), channels=channels_path, backbone=pruned_cfg,
                          **(dict(selection=by) if bandit else dict(tau=tau)))
    save_checkpoint(dict(meta=meta, state_dict=weights_to_cpu(get_state_dict(pruned))),
                    checkpoint_path)

    if shape is None:
        shape, _ = input_shape_of(cfg)
    samples = _det_data_samples(shape) if cfg.get('default_scope') == 'mmdet' else None
    reference = _baseline_model(model, backbone_cfg) if bandit else model
    before = _params_macs(reference, shape, samples)
    after = _params_macs(pruned, shape, samples)
    return dict(checkpoint=checkpoint_path, channels=channels_path, backbone=pruned_cfg,
                shape=list(shape), params=dict(before=before[0], after=after[0]),
                macs=dict(before=before[1], after=after[1]))
