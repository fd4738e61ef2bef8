"""CNN Mixture-of-Depths (MoD) routing: select k channels, process them, fuse them back.

Cakaj, Mehnert, Yang, "CNN Mixture-of-Depths" (ACCV 2024), Sec. 3 and Fig. 1::

    x (N, C, H, W) --> ChannelScorer --> scores s (N, C) --> top-k --> idx (N, k)
      |                                                                  |
      |         x[:, idx] (N, k, H, W) --> slim branch --> y * s[idx] (N, k, H, W)
      |                                                                  |
      +------------------------------------------------- fusion: x[:, :k] += y * s[idx]

The slim branch is the residual branch of the replaced block at width k (e.g. a bottleneck
k -> k/4 -> k) ending in a norm; multiplying its output by the selected channels' scores is the
only path by which gradients reach the selector (Sec. 3.2). Fusion adds to the *first* k channels
(Eq. 1): the paper found fixed positions better than scattering back (Sec. 3.3); the appendix's
'last' k channels and the 'original' positions are kept for the ablations. The graph is static:
top-k, one gather and one strided add, whatever the input.

Two execution paths, one result (both tested against a plain per-sample reference):

* :meth:`MoDBlock.forward` is the method as written above, and the path of training and export
  (trace, ``torch.export``, ONNX); it also runs inference where the compiled plan does not
  apply, and wherever mmmod's C++ operators cannot be built (``MMMOD_NO_CPP_OPS=1``);
* without autograd, the block is one call of a compiled plan (``mmmod/ops/csrc/mod.cpp``, built
  once per block): selector, top-k, gather by channel pointers, the branch with its norms folded
  on the fly, the scaled fusion added into ``x`` in place. The plan checks on each call that the
  block still holds the modules, parameters and buffers it was built from (a few pointer
  compares, nothing installed process-wide) and is rebuilt when one was replaced.

Top-k ties go to the lower channel index in both (:func:`top_channels`).
"""
from contextlib import contextmanager
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks import DropPath
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm

from mmmod.ops import cpp_module
from .selector import ChannelScorer

FUSIONS = ('first', 'last', 'original')
SELECTIONS = ('topk', 'random')


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f'{name} must be one of {list(choices)}, got {value!r}')


def gather_channels(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-sample channel gather.

    Args:
        x (Tensor): (N, C, H, W).
        idx (Tensor): (N, k) channel indices per sample.

    Returns:
        Tensor: (N, k, H, W) with ``out[n, j] = x[n, idx[n, j]]``.
    """
    n, _, h, w = x.shape
    if n == 1:
        return x.index_select(1, idx[0])  # (1, C, H, W) -> (1, k, H, W)
    k = idx.shape[1]
    return x.gather(1, idx[:, :, None, None].expand(n, k, h, w))  # (N, C, H, W) -> (N, k, H, W)


def top_channels(scores: torch.Tensor, k: int):
    """The k highest scores per sample, in descending order, ties to the lower channel index.

    ``torch.topk`` leaves the order of tied scores unspecified (it changes with the batch size),
    and ties are common: when the selector's ReLU zeroes every hidden unit, all C scores are
    exactly 0.5. A stable sort makes the choice deterministic and the same in every path
    (training, the PyTorch inference path, the compiled operator). Graphs being traced or
    exported get ``topk``, which exporters map to ONNX TopK -- whose ties go to the lower index
    too -- as ONNX has no stable sort.

    Args:
        scores (Tensor): (N, C).
        k (int): channels to keep.

    Returns:
        tuple[Tensor, Tensor]: scores (N, k) and channel indices (N, k).
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return scores.topk(k, dim=1)  # (N, C) -> (N, k), (N, k)
    values, idx = scores.sort(dim=1, descending=True, stable=True)  # (N, C), (N, C)
    return values[:, :k], idx[:, :k]


# Activation codes of mmmod/ops/csrc/mod.cpp.
_CPP_ACTS = {None: 0, nn.ReLU: 1, nn.ReLU6: 2}


def _kernel_layer(m: nn.Module):
    """One layer of a branch as mod.cpp's kernel takes it: a ConvModule computing
    act(bn(conv2d(x))), stride 1, zero padding, with running statistics and plain tensors.

    Returns:
        tuple | None: ``(tensors, norm, (stride, padding, dilation, groups, act code))`` with
        tensors = [conv weight, conv bias, norm weight, norm bias, running mean, running var]
        (biases and affine parameters may be None); None if the kernel does not take it.
    """
    if not (isinstance(m, ConvModule) and type(m.conv) is nn.Conv2d and m.with_norm
            and isinstance(m.norm, _BatchNorm) and m.order == ('conv', 'norm', 'act')
            and not m.with_explicit_padding and m.conv.padding_mode == 'zeros'):
        return None
    conv, norm = m.conv, m.norm
    act = type(m.activate) if m.with_activation else None
    geometry = (conv.stride, conv.padding, conv.dilation)
    if act not in _CPP_ACTS or conv.stride != (1, 1) or \
            any(not isinstance(v, tuple) or len(set(v)) != 1 for v in geometry):
        return None
    tensors = [conv._parameters.get('weight'), conv._parameters.get('bias'),
               norm._parameters.get('weight'), norm._parameters.get('bias'),
               norm._buffers.get('running_mean'), norm._buffers.get('running_var')]
    # a weight computed by a hook (pruning) is no parameter; eval without running statistics
    # normalises with the batch's
    if tensors[0] is None or tensors[4] is None or tensors[5] is None or \
            any(t is not None and type(t) not in (torch.Tensor, nn.Parameter) for t in tensors):
        return None
    return tensors, norm, (1, conv.padding[0], conv.dilation[0], conv.groups, _CPP_ACTS[act])


class MoDBlock(nn.Module):
    """A CNN-MoD block: route the top-k channels through a slim branch and fuse them back.

    Args:
        channels (int): C, channels of the input and output.
        k (int): number of processed channels, ``1 <= k <= C``
            (see :func:`~mmmod.models.layers.num_selected_channels`).
        branch (nn.Module): the slim conv branch, (N, k, H, W) -> (N, k, H, W), ending in a
            norm layer (no activation). An ``nn.Sequential`` of mmcv ``ConvModule`` s (conv,
            BatchNorm, optional ReLU / ReLU6, stride 1) runs as the compiled plan at inference.
        fusion (str): where processed channels are added: ``'first'`` k channels (the paper),
            ``'last'`` k channels (appendix "MoD-lk") or the ``'original'`` selected positions.
        selection (str): ``'topk'`` by the selector's scores (the paper) or ``'random'``
            channels without a selector and without score scaling (the paper's "MoD50 rand.").
        selector_reduction (int): r of the selector's FC bottleneck, hidden = C // r. Default 16.
        drop_path_rate (float): stochastic depth on the processed channels. Default 0.

    Shapes:
        x: (N, C, H, W) -> (N, C, H, W)

    Example:
        >>> from mmcv.cnn import ConvModule
        >>> branch = nn.Sequential(ConvModule(16, 16, 3, padding=1, norm_cfg=dict(type='BN'),
        ...                                   act_cfg=None))
        >>> block = MoDBlock(1024, k=16, branch=branch)
        >>> block(torch.rand(2, 1024, 14, 14)).shape
        torch.Size([2, 1024, 14, 14])
    """

    def __init__(self,
                 channels: int,
                 k: int,
                 branch: nn.Module,
                 fusion: str = 'first',
                 selection: str = 'topk',
                 selector_reduction: int = 16,
                 drop_path_rate: float = 0.0):
        super().__init__()
        _check_choice('fusion', fusion, FUSIONS)
        _check_choice('selection', selection, SELECTIONS)
        if not 1 <= k <= channels:
            raise ValueError(f'k (processed channels) must be in [1, {channels}], got {k}')
        if selector_reduction < 1:
            raise ValueError(f'selector_reduction must be >= 1, got {selector_reduction}')
        self.channels = channels
        self.in_channels = self.out_channels = channels  # the block contract of ResNet stages
        self.k = k
        self.fusion = fusion
        self.selection = selection
        self.selector = (ChannelScorer(channels, hidden_channels=channels // selector_reduction)
                         if selection == 'topk' else None)
        self.branch = branch
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else None
        # Set by `record_selections`; a list collecting the (N, k) indices of every forward.
        self.recorder: Optional[List[torch.Tensor]] = None
        # where mod.cpp adds the k processed channels: a fixed start channel, or -1 = back to
        # the selected positions
        self._fusion_offset = dict(first=0, last=channels - k, original=-1)[fusion]
        self._plan = None  # the compiled inference plan, built on first use without autograd

    def select(self, x: torch.Tensor):
        """Channel indices (N, k) and their scores (N, k) (None for random selection)."""
        if self.selector is None:
            idx = torch.rand(x.shape[:2], device=x.device).topk(self.k, dim=1).indices  # (N, k)
            return idx, None
        scores, idx = top_channels(self.selector(x), self.k)  # (N, C) -> (N, k), (N, k)
        return idx, scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MoD block (Sec. 3, Eq. 1): select k channels, run them through the branch,
        scale them by their scores and add them to the fusion channels of x.

        This is the training, export and reference path; without autograd the compiled plan
        (:meth:`_run_plan`) runs instead wherever it applies, adding into ``x`` in place.

        Args:
            x (Tensor): (N, C, H, W).

        Returns:
            Tensor: (N, C, H, W).
        """
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f'MoDBlock expects (N, {self.channels}, H, W) input, '
                             f'got {tuple(x.shape)}')
        if not torch.is_grad_enabled():
            out = self._run_plan(x)
            if out is not None:
                return out
        idx, scores = self.select(x)  # (N, k), (N, k)
        if self.recorder is not None:
            self.recorder.append(idx.detach().cpu())
        xs = gather_channels(x, idx)  # (N, C, H, W) -> (N, k, H, W)
        y = self.branch(xs)  # (N, k, H, W)
        if self.drop_path is not None:
            y = self.drop_path(y)
        s = None if scores is None else scores[:, :, None, None]  # (N, k) -> (N, k, 1, 1)
        return self._fuse(x, y, s, idx)

    def _run_plan(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The block by its compiled plan (``mmmod/ops/csrc/mod.cpp``): x (N, C, H, W) with the
        block applied in place, or None where the plan does not apply and :meth:`forward` runs.

        The plan decides that itself, in one place (``Plan::call``): it declines training-mode
        norms, a training drop path, a hooked selector, tracing and inputs that are not
        contiguous float CPU tensors of the weights' dtype. It answers False when a submodule,
        parameter or buffer anywhere in the block was replaced since it was built; then it is
        built again from the block as it is now.
        """
        plan = self._plan
        out = False if plan is None else plan(x, self.recorder)
        if out is False:
            plan = self._plan = self._make_plan()
            out = None if plan is None else plan(x, self.recorder)
        return out

    def _make_plan(self):
        """A compiled inference plan of the block as it is now, or None (no compiler, random
        selection: tried again on the next call, which costs a dict lookup)."""
        ops = cpp_module('mod')
        selector = self.selector
        if ops is None or selector is None:
            return None
        # the registration dicts of every module in the block: the plan runs only while they
        # hold the objects it was built from
        watched = [d for m in self.modules() for d in (m._modules, m._parameters, m._buffers)]
        layers = ([_kernel_layer(m) for m in self.branch]
                  if isinstance(self.branch, nn.Sequential) and len(self.branch) else [None])
        fcs = [selector.fc1] + ([] if selector.fc2 is None else [selector.fc2])
        if (None in layers or type(selector) is not ChannelScorer
                or any(type(fc) is not nn.Linear or fc.bias is not None
                       or type(fc.weight) is not nn.Parameter for fc in fcs)):
            return ops.Plan(watched)  # only watches: a change may make the block fit
        tensors = [t for layer in layers for t in layer[0]]
        strides, paddings, dilations, groups, acts = map(list, zip(*(g for _, _, g in layers)))
        return ops.Plan(watched, fcs[0].weight, None if len(fcs) == 1 else fcs[1].weight,
                        tensors, [norm for _, norm, _ in layers], selector, self.drop_path,
                        strides, paddings, dilations, groups, acts, self._fusion_offset, self.k)

    def _apply(self, fn, *args, **kwargs):
        # Conversions (.to(), .double(), .cuda()) replace buffers: the plan would notice and
        # rebuild on its next call; dropping it now also frees the old tensors it holds.
        self._plan = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__()
        state['_plan'] = None  # a compiled object: not picklable, rebuilt on first use
        return state

    def _fuse(self, x, y, s, idx) -> torch.Tensor:
        """x (N, C, H, W) + y * s (y (N, k, H, W), s (N, k, 1, 1) or None) at the fusion
        positions, as a new tensor (autograd may need x)."""
        k = self.k
        if self.fusion == 'original':
            y = y if s is None else y * s
            index = idx[:, :, None, None].expand_as(y)  # (N, k) -> (N, k, H, W)
            return x.scatter_add(1, index, y)  # (N, C, H, W) += (N, k, H, W) at idx
        c = self.channels
        lo, hi = (0, k) if self.fusion == 'first' else (c - k, c)
        fused = x[:, lo:hi] + y if s is None else torch.addcmul(x[:, lo:hi], y, s)
        parts = (fused, x[:, hi:]) if lo == 0 else (x[:, :lo], fused)
        return torch.cat(parts, dim=1)  # (N, k, H, W) + (N, C-k, H, W) -> (N, C, H, W)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, k={self.k}, fusion={self.fusion!r}, '
                f'selection={self.selection!r}')


@contextmanager
def record_selections(model: nn.Module):
    """Record which channels every :class:`MoDBlock` of ``model`` selects.

    Recording is off by default and costs one attribute check per block; inside this context
    each forward appends the (N, k) selected indices (on CPU) per block.

    Yields:
        dict[str, list[Tensor]]: module name -> list of (N, k) index tensors, one per forward.

    Example:
        >>> from mmmod.models import ResNetMoD
        >>> model = ResNetMoD(depth=18).eval()
        >>> with record_selections(model) as sel, torch.no_grad():
        ...     _ = model(torch.rand(2, 3, 64, 64))
        >>> sorted(sel)[0], sel['layer1.1'][0].shape
        ('layer1.1', torch.Size([2, 1]))
    """
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, MoDBlock)}
    records: Dict[str, List[torch.Tensor]] = {name: [] for name in blocks}
    for name, m in blocks.items():
        m.recorder = records[name]
    try:
        yield records
    finally:
        for m in blocks.values():
            m.recorder = None
