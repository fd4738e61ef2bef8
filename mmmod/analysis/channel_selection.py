"""Per-class channel selection frequencies of one MoD block (the CNN-MoD paper's Fig. 4)."""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from mmmod.models.layers import MoDBlock, record_selections


def mod_block_names(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules() if isinstance(m, MoDBlock)]


@torch.no_grad()
def selection_counts(model: nn.Module, dataloader, block: str,
                     max_batches: Optional[int] = None,
                     progress: bool = True) -> Dict[int, np.ndarray]:
    """Count how often each channel of ``block`` is selected, per ground-truth class.

    Args:
        model: an mmpretrain classifier (with ``data_preprocessor``) containing MoD blocks.
        dataloader: yields mmengine data batches with ``gt_label`` in the data samples.
        block (str): module name of a :class:`MoDBlock`, e.g. ``'backbone.layer3.1'``.

    Returns:
        dict[int, ndarray]: class index -> (C, ) selection counts.
    """
    names = mod_block_names(model)
    if block not in names:
        raise KeyError(f'{block!r} is not a MoD block of this model; MoD blocks: {names}')
    channels = model.get_submodule(block).channels
    counts: Dict[int, np.ndarray] = {}
    model.eval()
    bar = None
    if progress:
        from mmengine.utils import ProgressBar
        total = len(dataloader) if max_batches is None else min(max_batches, len(dataloader))
        bar = ProgressBar(total)
    for i, data in enumerate(dataloader):
        if max_batches is not None and i >= max_batches:
            break
        data = model.data_preprocessor(data, False)
        with record_selections(model) as records:
            model(data['inputs'], mode='tensor')
        idx = torch.cat(records[block])  # (N, k) for this batch
        for sample, sel in zip(data['data_samples'], idx):
            label = int(sample.gt_label[0])
            counts.setdefault(label, np.zeros(channels, dtype=np.int64))
            np.add.at(counts[label], sel.numpy(), 1)
        if bar is not None:
            bar.update()
    return counts


def plot_selection_frequencies(counts: Dict[int, np.ndarray], out_file: str,
                               classes: Optional[Sequence[int]] = None,
                               class_names: Optional[Sequence[str]] = None,
                               title: str = '') -> str:
    """Bar charts of the selection percentage per channel: all classes, then one per class."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    classes = sorted(counts) if classes is None else list(classes)
    missing = [c for c in classes if c not in counts]
    if missing:
        raise KeyError(f'no samples of classes {missing}; classes seen: {sorted(counts)}')
    panels = [('all classes', sum(counts.values()))]
    panels += [(class_names[c].split(',')[0] if class_names else f'class {c}', counts[c])
               for c in classes]  # 'tench, Tinca tinca' -> 'tench'
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.8 * len(panels)), sharex=True,
                             squeeze=False)
    for ax, (name, cnt) in zip(axes[:, 0], panels):
        pct = 100.0 * cnt / max(1, cnt.sum())
        ax.bar(np.arange(len(cnt)), pct, width=1.0, color='tab:blue')
        ax.set_ylabel('%')
        ax.set_title(name, fontsize=9, loc='left')
    axes[-1, 0].set_xlabel('channel')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_file, dpi=120)
    plt.close(fig)
    return out_file
