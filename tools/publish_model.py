"""Prepare a training checkpoint for the model zoo (as OpenMMLab's ``tools/publish_model.py``).

    python tools/publish_model.py work_dirs/resnet86-mod_8xb32_in1k/epoch_100.pth \
        resnet86-mod_8xb32_in1k.pth
    # -> resnet86-mod_8xb32_in1k-1a2b3c4d.pth (first 8 hex digits of its sha256)

Keeps ``state_dict`` and ``meta``; drops what only resuming needs (optimizer, param
schedulers, message hub, EMA copies), so the file is smaller and loads with torch's
``weights_only=True`` without mmmod's allow-list.
"""
import argparse
import os
import os.path as osp

import torch
from mmengine.runner.checkpoint import _load_checkpoint

import mmmod  # noqa: F401  mmengine's loaders read training checkpoints safely
from mmmod.compat.checkpoint import sha256_of

# What a Runner checkpoint holds besides the weights, needed to resume only.
TRAINING_STATE = ('optimizer', 'param_schedulers', 'message_hub', 'ema_state_dict')
SHA_DIGITS = 8


def publish(in_file: str, out_file: str) -> str:
    """Write ``in_file`` without training state as ``<out stem>-<sha256[:8]>.pth``; return it."""
    checkpoint = _load_checkpoint(in_file, map_location='cpu')
    if 'state_dict' not in checkpoint:
        raise KeyError(f'{in_file} has no "state_dict"; is it a checkpoint written by '
                       f'mmengine\'s Runner? keys: {sorted(checkpoint)}')
    for key in TRAINING_STATE:
        checkpoint.pop(key, None)
    stem = out_file[:-len('.pth')] if out_file.endswith('.pth') else out_file
    tmp = stem + '.pth.tmp'
    torch.save(checkpoint, tmp)
    final = f'{stem}-{sha256_of(tmp)[:SHA_DIGITS]}.pth'
    os.replace(tmp, final)
    return final


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('in_file', help='checkpoint written by tools/train.py')
    parser.add_argument('out_file', help='output name; the sha256 suffix is added')
    args = parser.parse_args(argv)
    if osp.dirname(args.out_file):
        os.makedirs(osp.dirname(args.out_file), exist_ok=True)
    print(publish(args.in_file, args.out_file))


if __name__ == '__main__':
    main()
