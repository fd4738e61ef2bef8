"""Per-layer active fraction over a dynamic-channel-execution run, read from the history
``ChannelBanditHook`` appends to ``WORK_DIR/bandit_history.jsonl``, and plotted as a PNG.

The bandit selects the global top fraction p of arms, so layers compete: how much of each
layer stays active over training is what decides the compact network's shape (the paper's
ResNet-50 cannot shrink its residual stream, VGG-19 can shrink every layer).
"""
import json
from typing import Dict, List, Optional

import numpy as np

HISTORY_KEYS = ('iter', 'layers', 'active', 'untried')


def read_history(path: str) -> Dict[str, object]:
    """The history as arrays.

    Returns:
        dict: ``iters`` (T,), ``layers`` (L names ``site/position``), ``active`` (T, L)
        fractions, ``untried`` (T,). A resumed run appends records the interrupted one also
        wrote (same ``iter``): the last record of an iteration wins.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), 'h.jsonl')
        >>> with open(path, 'w') as f:
        ...     for i in (1, 2, 2):
        ...         _ = f.write(json.dumps(dict(iter=i, layers=['a/x', 'b/y'], untried=0,
        ...                                     active=[.5, i / 4])) + '\\n')
        >>> h = read_history(path)
        >>> h['iters'].tolist(), h['active'][:, 1].tolist()
        ([1, 2], [0.25, 0.5])
    """
    records: Dict[int, dict] = {}
    layers: Optional[List[str]] = None
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f'{path}, line {number}'
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{where} is not JSON ({e.msg}): expected one object a line '
                                 f'as ChannelBanditHook writes') from None
            if not isinstance(record, dict) or set(HISTORY_KEYS) - set(record):
                raise ValueError(f'{where}: expected an object with keys {list(HISTORY_KEYS)}, '
                                 f'got {sorted(record) if isinstance(record, dict) else record!r}')
            if layers is None:
                layers = list(record['layers'])
            if list(record['layers']) != layers or len(record['active']) != len(layers):
                raise ValueError(f'{where}: its layers differ from the first record\'s; the '
                                 f'file mixes runs of different models')
            records[int(record['iter'])] = record
    if not records:
        raise ValueError(f'{path} holds no record: did the run reach its first log interval '
                         f'(ChannelBanditHook(log_interval=...))?')
    iters = sorted(records)
    return dict(iters=np.array(iters),
                layers=layers,
                active=np.array([records[i]['active'] for i in iters], dtype=np.float64),
                untried=np.array([records[i]['untried'] for i in iters]))


def plot_layer_activity(history: Dict[str, object], out: str, title: str = '') -> str:
    """A PNG of the history: per-layer active fraction over iterations as a heat map (layers
    in network order, one row each), with the untried arms below. Returns ``out``."""
    import matplotlib
    matplotlib.use('Agg')  # files only; no display
    import matplotlib.pyplot as plt

    active, iters, layers = history['active'], history['iters'], history['layers']
    fig, (ax, ax_untried) = plt.subplots(
        2, 1, figsize=(10, 2 + 0.12 * len(layers)), sharex=True,
        gridspec_kw=dict(height_ratios=[max(4, len(layers) // 4), 1]))
    extent = (iters[0] - 0.5, iters[-1] + 0.5, len(layers) - 0.5, -0.5)
    image = ax.imshow(active.T, aspect='auto', interpolation='nearest', cmap='viridis',
                      vmin=0, vmax=1, extent=extent)
    step = max(1, len(layers) // 24)  # keep the labels legible
    ax.set_yticks(range(0, len(layers), step), layers[::step], fontsize=7)
    ax.set_ylabel('arm layer (site/position)')
    ax.set_title(title or 'active fraction per layer')
    fig.colorbar(image, ax=ax, label='active fraction')
    ax_untried.plot(iters, history['untried'], color='k')
    ax_untried.set_xlabel('iteration')
    ax_untried.set_ylabel('untried arms')
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
