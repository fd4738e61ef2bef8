"""What PrunedResNet and PrunedMobileNetV2 share: reading and checking the channel config the
exporter writes, and slicing a full-width state dict into a pruned network's."""
import json
import os.path as osp
import warnings
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_conv_layer, build_norm_layer

# What tools/export_pruned.py writes into the channel JSON's "format" field.
CHANNEL_CFG_FORMAT = 'mmmod.pruned.v1'


def load_channel_cfg(channel_cfg: Union[str, Mapping]) -> dict:
    """A channel config as a dict: given as one, or the path of the JSON the exporter writes."""
    if isinstance(channel_cfg, str):
        if not osp.isfile(channel_cfg):
            raise FileNotFoundError(
                f'channel_cfg {channel_cfg!r} not found: point it at the <name>_channels.json '
                f'that tools/export_pruned.py wrote')
        with open(channel_cfg) as f:
            channel_cfg = json.load(f)
    blocks = channel_cfg.get('blocks') if isinstance(channel_cfg, Mapping) else None
    if not isinstance(blocks, Mapping):
        raise TypeError('channel_cfg must be a dict (or JSON file) with a "blocks" dict: block '
                        'name (e.g. "layer1.0") -> position -> kept channel indices')
    return dict(channel_cfg)


def check_block_names(blocks: Mapping, expected: Iterable[str], what: str) -> None:
    """Every block of the network listed, nothing else."""
    expected = set(expected)
    missing, unknown = sorted(expected - set(blocks)), sorted(set(blocks) - expected)
    if missing or unknown:
        raise ValueError(f'channel_cfg must list every block of {what}; missing '
                         f'{missing[:6]}, unknown {unknown[:6]}')


def check_positions(block: str, owner: str, kept: Mapping, widths: Mapping[str, int],
                    allow_empty: bool = False) -> Dict[str, Tuple[int, ...]]:
    """``kept`` position -> indices checked against ``widths`` position -> full width."""
    missing = [p for p in widths if p not in kept]
    unknown = [p for p in kept if p not in widths]
    if missing or unknown:
        raise ValueError(f'channel_cfg block {block!r} ({owner}) needs exactly the positions '
                         f'{list(widths)}; missing {missing}, unknown {unknown}')
    out = {}
    for pos, channels in widths.items():
        index, where = kept[pos], f'channel_cfg block {block!r} position {pos!r}'
        if (not isinstance(index, (list, tuple))
                or any(isinstance(i, bool) or not isinstance(i, int) for i in index)):
            raise TypeError(f'{where}: expected a list of channel indices (ints), got {index!r}')
        if not index and not allow_empty:
            raise ValueError(f'{where} keeps no channel; this block needs at least one per '
                             f'position (gated models keep the first group of each always on)')
        out_of_range = bool(index) and (index[0] < 0 or index[-1] >= channels)
        if list(index) != sorted(set(index)) or out_of_range:
            raise ValueError(f'{where}: indices must be strictly increasing in [0, {channels}),'
                             f' got {list(index)[:8]}{"..." if len(index) > 8 else ""}')
        out[pos] = tuple(index)
    return out


def index_buffer(index: Tuple[int, ...], width: int):
    """Kept indices as a tensor, or None when every channel is kept (no gather needed)."""
    return None if len(index) == width else torch.tensor(index, dtype=torch.long)


def _replace(block: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition('.')
    setattr(block.get_submodule(parent) if parent else block, leaf, module)


def prune_block(block: nn.Module, kept: Mapping[str, Tuple[int, ...]],
                widths: Mapping[str, int], stream: Optional[Tuple[int, ...]] = None) -> None:
    """Rebuild every conv + norm of a full-width block's ``channel_structure`` with the
    ``kept`` channels of the sets it reads and writes, in place (same sub-module names, so
    the state-dict names stay upstream's); a step keeping no channel becomes ``nn.Identity``
    (residual inverted residuals only). Sets ``block.slices`` (sub-module name -> (kept output
    rows, kept input columns or None)) and the buffers ``index_<position>`` that
    :class:`~mmmod.models.layers.channel_structure.KeptChannels` reads (None: all kept; not
    persistent: ``channel_cfg`` is their source).

    ``stream``: the channels of the block input that reach the block, when the input is
    already slim (a pruned stem feeding ``layer1.0``): the shortcut reads them, and the
    branch input's kept channels (a subset) are gathered from them."""
    s = block.channel_structure
    names = {id(m): n for n, m in block.named_modules()}
    block.slices = {}
    for step in s.steps:
        _, conv, norm, _ = step.parts(block)
        rows = kept[step.writes]
        if not rows:  # nothing of this step is used
            _replace(block, names[id(step.unit_of(block))], nn.Identity())
            continue
        depthwise = conv.groups > 1
        k_in = (conv.in_channels if stream is None else len(stream)) if step.reads is None \
            else len(kept[step.reads])
        owner = step.unit_of(block) if step.unit is not None else block
        if not hasattr(owner, 'norm_cfg'):  # upstream's downsample Sequential
            owner = block
        with warnings.catch_warnings():
            # a closed input gives a conv without input channels: nothing to initialise
            warnings.filterwarnings('ignore', 'Initializing zero-element tensors')
            slim = build_conv_layer(owner.conv_cfg, k_in, len(rows),
                                    kernel_size=conv.kernel_size, stride=conv.stride,
                                    padding=conv.padding, dilation=conv.dilation,
                                    groups=len(rows) if depthwise else 1,
                                    bias=conv.bias is not None)
        # a pre-activation step's norm sits on the set it reads (DenseNet), not on its output
        norm_rows = kept[step.reads] if step.pre_act else rows
        _replace(block, names[id(conv)], slim)
        _replace(block, names[id(norm)], build_norm_layer(owner.norm_cfg, len(norm_rows))[1])
        cols = stream if step.reads is None else None if depthwise else kept[step.reads]
        block.slices[names[id(conv)]] = (rows, cols)
        block.slices[names[id(norm)]] = (norm_rows, None)
    for pos in s.positions:
        index = index_buffer(kept[pos], widths[pos])
        if stream is not None and pos == s.entry:
            if not set(kept[pos]) <= set(stream):
                raise ValueError(f'the block input keeps channels the stream does not carry: '
                                 f'{sorted(set(kept[pos]) - set(stream))[:8]}')
            where = {c: i for i, c in enumerate(stream)}  # full index -> slim index
            index = index_buffer(tuple(where[c] for c in kept[pos]), len(stream))
        block.register_buffer('index_' + pos, index, persistent=False)


class PrunedBackboneMixin:
    """Slices full-width weights into a pruned backbone. Its pruned blocks expose ``slices``:
    sub-module name -> (kept output rows, kept input columns or None)."""

    @staticmethod
    def block_name(stage: int, index: int) -> str:
        """The state-dict prefix of block ``index`` of ``stage``, the key of its ``channel_cfg``."""
        return f'layer{stage + 1}.{index}'

    def state_dict_from_full(self, full: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """This network's state dict sliced out of the full-width network's (a gated one's
        too: its gate entries are ignored). Keys without a prefix (backbone level)."""
        sliced = {}
        for block_name, block in self.named_modules():
            for sub, rows_cols in getattr(block, 'slices', {}).items():
                sliced[f'{block_name}.{sub}.' if block_name else f'{sub}.'] = rows_cols
        out = {}
        for key, value in self.state_dict().items():
            if key not in full:
                raise KeyError(f'the full-width state dict has no {key!r}: not the unpruned '
                               f'{type(self).__name__} of this architecture')
            source = full[key]
            prefix = key[:key.rfind('.') + 1]
            mismatch = ValueError(f'{key}: full-width tensor {tuple(source.shape)} does not '
                                  f'slice to {tuple(value.shape)}; channel_cfg and checkpoint '
                                  f'are of different networks')
            if prefix in sliced and source.dim() >= 1:
                rows, cols = (None if i is None else torch.tensor(i, dtype=torch.long)
                              for i in sliced[prefix])
                if (len(rows) and rows.max() >= source.shape[0]) or (
                        cols is not None and len(cols) and source.dim() >= 2
                        and cols.max() >= source.shape[1]):
                    raise mismatch
                source = source.index_select(0, rows)  # (C_out, ...) -> (k_out, ...)
                if cols is not None and source.dim() >= 2:
                    source = source.index_select(1, cols)  # (k_out, C_in, ..) -> (k_out, k_in, ..)
            if source.shape != value.shape:
                raise mismatch
            out[key] = source.clone()
        return out
