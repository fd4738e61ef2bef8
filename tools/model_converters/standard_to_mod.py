"""Weights for the standard blocks of a MoD backbone from a standard ResNet / MobileNetV2.

    python tools/model_converters/standard_to_mod.py SRC CONFIG DST [--prefix backbone.]

SRC is a torchvision ``resnet*`` / ``mobilenet_v2`` state dict, or an mmpretrain checkpoint
(classifier with ``backbone.`` keys, or a bare backbone). CONFIG is any mmmod config; its
``model.backbone`` is built to know the target keys and shapes. The stem, block 0 of every stage
and every other standard block have the same state-dict names as mmpretrain's ResNet /
MobileNetV2 (Sec. 3.4 of the paper keeps them standard), so they load one to one; MoD blocks
(Channel Selector + slim branch) have no counterpart and keep their initialisation. Every
tensor is shape-checked; the script prints what was loaded and what was not, and writes
``{'state_dict': {prefix + key: tensor}, 'meta': {...}}`` -- usable as
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')`` or ``load_from``.
"""
import argparse
import re
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
from mmengine.config import Config
from mmengine.runner.checkpoint import _load_checkpoint

import mmmod  # noqa: F401  registers the MoD backbones; safe checkpoint loaders
from mmmod.models.backbones.base import MOBILENET_V2  # t, c, n, s; features.1..17 in order
from mmmod.registry import MODELS



def _torchvision_resnet(state: Dict) -> Dict:
    # mmpretrain's ResNet kept torchvision's names (conv1, bn1, layerX.Y.convZ/bnZ,
    # downsample.0/1); only the classifier goes.
    return OrderedDict((k, v) for k, v in state.items() if not k.startswith('fc.'))


def _torchvision_mobilenet_v2(state: Dict) -> Dict:
    blocks = []  # features index 1..17 -> (layer name, expand ratio)
    for i, (t, _, n, _) in enumerate(MOBILENET_V2, start=1):
        blocks += [(f'layer{i}.{j}', t) for j in range(n)]
    last = len(blocks) + 1  # features.18: the final 1x1 conv
    out = OrderedDict()
    for key, value in state.items():
        m = re.match(r'^features\.(\d+)\.(.*)$', key)
        if m is None:
            continue  # classifier.1: head, not backbone
        idx, rest = int(m.group(1)), m.group(2)
        if idx == 0 or idx == last:  # Conv2dNormActivation: .0 conv, .1 bn
            name = 'conv1' if idx == 0 else 'conv2'
            out[re.sub(r'^0\.', f'{name}.conv.', re.sub(r'^1\.', f'{name}.bn.', rest))] = value
            continue
        layer, t = blocks[idx - 1]
        linear = 1 if t == 1 else 2  # index of the pw-linear conv in torchvision's block
        c = re.match(r'^conv\.(\d+)\.(.*)$', rest)
        sub, tail = int(c.group(1)), c.group(2)
        if sub < linear:  # Conv2dNormActivation (expand / dw): .0 conv, .1 bn
            tail = re.sub(r'^0\.', 'conv.', re.sub(r'^1\.', 'bn.', tail))
            out[f'{layer}.conv.{sub}.{tail}'] = value
        elif sub == linear:  # plain Conv2d (pw-linear)
            out[f'{layer}.conv.{linear}.conv.{tail}'] = value
        else:  # its BatchNorm2d
            out[f'{layer}.conv.{linear}.bn.{tail}'] = value
    return out


def standard_backbone_state(checkpoint: Dict) -> Tuple[Dict, str]:
    """The backbone state dict in mmpretrain's names, and the source format found."""
    state = checkpoint.get('state_dict', checkpoint)
    if any(k.startswith('backbone.') for k in state):
        return OrderedDict((k[len('backbone.'):], v) for k, v in state.items()
                           if k.startswith('backbone.')), 'mmpretrain classifier'
    if 'features.0.0.weight' in state:
        return _torchvision_mobilenet_v2(state), 'torchvision MobileNetV2'
    if 'bn1.weight' in state and 'layer1.0.conv1.weight' in state:
        return _torchvision_resnet(state), 'torchvision ResNet'
    return OrderedDict(state), 'mmpretrain backbone'


def convert(source: Dict, target: Dict) -> Tuple[Dict, List[str], List[str], List[str]]:
    """Match ``source`` to ``target`` by name and shape.

    Returns:
        (loaded state dict, target keys not loaded, source keys unused, shape mismatches)
    """
    loaded, mismatched = OrderedDict(), []
    for key, value in source.items():
        if key not in target:
            continue
        if tuple(value.shape) != tuple(target[key].shape):
            mismatched.append(f'{key}: source {tuple(value.shape)} vs target '
                              f'{tuple(target[key].shape)}')
            continue
        loaded[key] = value
    not_loaded = [k for k in target if k not in loaded]
    unused = [k for k in source if k not in loaded]
    return loaded, not_loaded, unused, mismatched


def build_target_backbone(config: str) -> torch.nn.Module:
    backbone = Config.fromfile(config).model.backbone.to_dict()
    backbone.pop('_delete_', None)
    backbone['init_cfg'] = None  # the state dict's keys and shapes are all that is needed
    return MODELS.build(backbone)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='torchvision or mmpretrain ResNet / MobileNetV2 checkpoint')
    parser.add_argument('config', help='mmmod config whose model.backbone is the target')
    parser.add_argument('dst', help='output checkpoint')
    parser.add_argument('--prefix', default='backbone.',
                        help='prefix of the written keys (default: backbone.)')
    args = parser.parse_args(argv)

    checkpoint = _load_checkpoint(args.src, map_location='cpu')
    source, fmt = standard_backbone_state(checkpoint)
    backbone = build_target_backbone(args.config)
    target = backbone.state_dict()
    loaded, not_loaded, unused, mismatched = convert(source, target)

    print(f'source: {args.src} ({fmt}, {len(source)} backbone tensors)')
    print(f'target: {type(backbone).__name__} of {args.config} ({len(target)} tensors)')
    print(f'loaded: {len(loaded)} tensors')
    for key in loaded:
        print(f'  {key}')
    print(f'not loaded (keep their initialisation): {len(not_loaded)} tensors')
    for key in not_loaded:
        print(f'  {key}')
    print(f'shape mismatch (skipped): {len(mismatched)}')
    for line in mismatched:
        print(f'  {line}')
    print(f'source tensors unused: {len(unused)}')
    for key in unused:
        print(f'  {key}')
    if not loaded:
        raise SystemExit(f'no tensor of {args.src} matches {type(backbone).__name__}; '
                         'is it a ResNet / MobileNetV2 checkpoint of the same family?')
    torch.save(dict(state_dict=OrderedDict((args.prefix + k, v) for k, v in loaded.items()),
                    meta=dict(converted_from=args.src, source_format=fmt,
                              target_config=args.config)), args.dst)
    print(f'written: {args.dst}')


if __name__ == '__main__':
    main()
