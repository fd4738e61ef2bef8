"""Plot which channels a MoD block selects, per class (the CNN-MoD paper's Fig. 4).

    python tools/analysis/channel_selection.py CONFIG CHECKPOINT \
        --block backbone.layer3.1 --classes 0 1 2 --out selection.png

Runs the config's test dataloader (``--split val`` for val_dataloader) through the model,
records the block's top-k selections and writes a PNG: the selection percentage per channel over
all classes, then one panel per requested class.
"""
import argparse

from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, load_checkpoint

import mmmod  # noqa: F401
from mmmod.analysis.channel_selection import (mod_block_names, plot_selection_frequencies,
                                              selection_counts)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint', nargs='?', help='omit to use the initialised weights')
    p.add_argument('--block', help='MoD block name; omitted: list the MoD blocks and exit')
    p.add_argument('--classes', type=int, nargs='+', help='class indices to plot')
    p.add_argument('--split', choices=['test', 'val'], default='test')
    p.add_argument('--max-batches', type=int)
    p.add_argument('--out', default='channel_selection.png')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args()


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    from mmpretrain.registry import MODELS
    model = MODELS.build(cfg.model)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, map_location='cpu')
    if not args.block:
        print('MoD blocks:', ' '.join(mod_block_names(model)))
        return
    loader = Runner.build_dataloader(cfg[f'{args.split}_dataloader'])
    counts = selection_counts(model, loader, args.block, args.max_batches)
    names = loader.dataset.metainfo.get('classes')
    out = plot_selection_frequencies(counts, args.out, args.classes, names,
                                     title=f'{args.block}: channel selection frequency')
    print(f'wrote {out} ({sum(int(c.sum()) for c in counts.values())} selections, '
          f'{len(counts)} classes)')


if __name__ == '__main__':
    main()
