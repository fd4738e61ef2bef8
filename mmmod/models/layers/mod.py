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

Inference is engineered for speed while training stays exact:

* without autograd and with frozen norms the whole block is one compiled call (a plan built
  once per block, ``mmmod/ops/csrc/mod.cpp``): selector, top-k, gather by channel pointers,
  the branch with its norms folded, the scaled fusion added into ``x`` in place;
* without a compiler the same path runs on PyTorch ops: convs with the norms folded in
  (cached, refreshed when a parameter changes), 1x1 convs as one ``addmm`` at batch 1, the
  fusion in place;
* top-k ties go to the lower channel index in every path (:func:`top_channels`).
"""
from contextlib import contextmanager
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks import DropPath
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm

from mmmod.ops import GENERATION as _GENERATION
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


def _inplace_act(act: nn.Module):
    """The in-place function of a ReLU / ReLU6 module (cheaper than a module call)."""
    if type(act) is nn.ReLU:
        return torch.relu_
    if type(act) is nn.ReLU6:
        return lambda t: t.clamp_(0.0, 6.0)
    return act


class _FoldedBranch:
    """A branch of ``ConvModule`` s run as plain convs with their eval-mode BatchNorm folded in.

    The folded weights are cached; the cache key holds the storage address and ``_version``
    counter of every parameter and buffer involved (and the norms' eps), so ``load_state_dict``,
    optimizer steps, in-place edits, replaced tensors and ``.to()`` conversions rebuild it on the
    next call. For batch size 1, 1x1 stride-1 convs run as one ``addmm`` on (C, H*W) views,
    which skips the convolution dispatch -- at MoD widths (k = 4..32 channels) that dispatch
    costs more than the arithmetic.
    """

    def __init__(self, layers):
        self.layers = list(layers)  # references to the branch's ConvModules, not copies
        # (ConvModule, child name) of every conv and norm: a child replaced later (e.g. SyncBN
        # reverted to BN) is noticed by identity. Module attribute lookups cost ~1 us each, so
        # the children and their tensor slots are cached and re-bound only when one changes.
        self.children = [(m, name) for m in self.layers for name in ('conv', m.norm_name)]
        self.bound = None
        self.key = None
        self.plan = None
        # oneDNN's depthwise conv costs ~40% less on channels_last input at MoD widths, so a
        # branch with one (MobileNetV2's) keeps its batch-1 maps channels_last throughout.
        self.channels_last = any(m.conv.groups > 1 for m in self.layers)
        self.bind()

    def bind(self) -> None:
        """Follow replaced conv / norm children (cheap when nothing changed)."""
        mods = [m._modules[name] for m, name in self.children]
        if mods == self.bound:
            return
        self.bound, self.key = mods, None
        self.norms = mods[1::2]
        self.slots = []  # (dict, name) of every tensor the folded weights depend on
        for conv, norm in zip(mods[0::2], mods[1::2]):
            self.slots += [(conv._parameters, 'weight'), (conv._parameters, 'bias'),
                           (norm._parameters, 'weight'), (norm._parameters, 'bias'),
                           (norm._buffers, 'running_mean'), (norm._buffers, 'running_var')]
        self.cpp_static = self._cpp_static()

    def _cpp_static(self):
        """The layers' geometry as arguments of ``mod_block_`` of ``mmmod/ops/csrc/mod.cpp``:
        strides, paddings, dilations, groups, activations (None if a layer does not fit the
        kernel: stride other than 1, non-square padding or dilation, other activations)."""
        acts, geometry = [], []
        for m in self.layers:
            act = type(m.activate) if m.with_activation else None
            if act not in _CPP_ACTS:
                return None
            acts.append(_CPP_ACTS[act])
            conv = m.conv
            values = (conv.stride, conv.padding, conv.dilation)
            if any(not isinstance(v, tuple) or len(set(v)) != 1 for v in values) or \
                    conv.stride[0] != 1:
                return None
            geometry.append([v[0] for v in values] + [conv.groups])
        strides, paddings, dilations, groups = map(list, zip(*geometry))
        return strides, paddings, dilations, groups, acts

    def cpp_tensors(self):
        """The tensors the C++ operator reads -- per layer conv weight, conv bias, norm weight,
        norm bias, running mean and running var, looked up anew so replaced children and
        parameters are followed -- and the norms' eps. The caller ran :meth:`bind`."""
        return [d.get(name) for d, name in self.slots], [norm.eps for norm in self.norms]

    def frozen(self) -> bool:
        """Whether every norm uses running statistics, i.e. folding is exact."""
        self.bind()
        return not any(norm.training for norm in self.norms)

    def _key(self):
        key = [None if t is None else (t.data_ptr(), t._version)
               for t in [d.get(name) for d, name in self.slots]]
        key.append(tuple(norm.eps for norm in self.norms))
        return key

    def _build(self):
        plan = []
        with torch.no_grad():
            for m in self.layers:
                conv, bn = m.conv, m.norm
                scale = (bn.running_var + bn.eps).rsqrt()
                if bn.weight is not None:
                    scale = scale * bn.weight
                bias = -bn.running_mean * scale
                if conv.bias is not None:
                    bias = bias + conv.bias * scale
                if bn.bias is not None:
                    bias = bias + bn.bias
                weight = (conv.weight * scale.reshape(-1, 1, 1, 1)).contiguous()
                act = _inplace_act(m.activate) if m.with_activation else None
                pointwise = (conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                             and conv.padding == (0, 0) and conv.groups == 1)
                matrix = weight.flatten(1) if pointwise else None  # (out, in, 1, 1) -> (out, in)
                plan.append((weight, bias, matrix, conv.stride, conv.padding,
                             conv.dilation, conv.groups, act))
        return plan

    def refresh(self):
        """Rebuild the folded weights if any tensor they depend on changed."""
        key = self._key()
        if key != self.key:
            self.plan, self.key = self._build(), key

    def __call__(self, xs: torch.Tensor) -> torch.Tensor:
        """xs (N, k, H, W) -> (N, k', H', W'); the caller ran :meth:`refresh`."""
        if xs.shape[0] != 1:
            for weight, bias, _, stride, padding, dilation, groups, act in self.plan:
                xs = F.conv2d(xs, weight, bias, stride, padding, dilation, groups)
                xs = xs if act is None else act(xs)
            return xs
        for weight, bias, matrix, stride, padding, dilation, groups, act in self.plan:
            if matrix is not None:
                xs = _pointwise(xs, matrix, bias, self.channels_last)
            else:
                xs = F.conv2d(xs, weight, bias, stride, padding, dilation, groups)
            xs = xs if act is None else act(xs)
        return xs


def _pointwise(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor,
               channels_last: bool) -> torch.Tensor:
    """A 1x1 conv of a batch-1 map as one ``addmm``, reading either memory layout.

    x (1, C, H, W), contiguous or channels_last; matrix (C', C); bias (C',).
    Returns (1, C', H, W), channels_last if ``channels_last`` else contiguous.
    """
    _, c, h, w = x.shape
    if x.is_contiguous():
        rows = x.view(c, h * w).t()  # (1, C, H, W) -> (HW, C), a transposed view
    else:
        rows = x.permute(0, 2, 3, 1).reshape(h * w, c)  # channels_last -> (HW, C), a view
    if channels_last:
        out = torch.addmm(bias, rows, matrix.t())  # (HW, C) @ (C, C') -> (HW, C')
        return out.view(1, h, w, -1).permute(0, 3, 1, 2)  # (HW, C') -> (1, C', H, W) CL
    out = torch.addmm(bias[:, None], matrix, rows.t())  # (C', C) @ (C, HW) -> (C', HW)
    return out.view(1, -1, h, w)  # (C', HW) -> (1, C', H, W)


# Activation codes and dtypes of mmmod/ops/csrc/mod.cpp.
_CPP_ACTS = {None: 0, nn.ReLU: 1, nn.ReLU6: 2}
_CPP_DTYPES = (torch.float32, torch.float64)


def _has_hooks(m: nn.Module) -> bool:
    """Whether calling ``m`` would run forward hooks (then the fast path calls the module)."""
    return bool(m._forward_hooks or m._forward_pre_hooks)


def _foldable(m: nn.Module) -> bool:
    """A ConvModule computing act(bn(conv2d(x))) with plain zero padding."""
    return (isinstance(m, ConvModule) and type(m.conv) is nn.Conv2d and m.with_norm
            and isinstance(m.norm, _BatchNorm) and m.norm.track_running_stats
            and m.order == ('conv', 'norm', 'act') and not m.with_explicit_padding
            and m.conv.padding_mode == 'zeros')


class MoDBlock(nn.Module):
    """A CNN-MoD block: route the top-k channels through a slim branch and fuse them back.

    Args:
        channels (int): C, channels of the input and output.
        k (int): number of processed channels, ``1 <= k <= C``
            (see :func:`~mmmod.models.layers.num_selected_channels`).
        branch (nn.Module): the slim conv branch, (N, k, H, W) -> (N, k, H, W), ending in a
            norm layer (no activation). An ``nn.Sequential`` of mmcv ``ConvModule`` s gets the
            folded-norm inference path.
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
        self._folded = (_FoldedBranch(branch) if isinstance(branch, nn.Sequential)
                        and all(map(_foldable, branch)) else None)
        self._plan = None  # (generation, compiled inference plan or None), built on first use

    def select(self, x: torch.Tensor):
        """Channel indices (N, k) and their scores (N, k) (None for random selection)."""
        if self.selector is None:
            idx = torch.rand(x.shape[:2], device=x.device).topk(self.k, dim=1).indices  # (N, k)
            return idx, None
        scores, idx = top_channels(self.selector(x), self.k)  # (N, C) -> (N, k), (N, k)
        return idx, scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f'MoDBlock expects (N, {self.channels}, H, W) input, '
                             f'got {tuple(x.shape)}')
        if not torch.is_grad_enabled() and self._folded is not None:
            plan = self._plan
            if plan is None or plan[0] != _GENERATION[0]:
                plan = self._plan = (_GENERATION[0], self._make_plan())
            if plan[1] is not None:
                out = plan[1](x, self.recorder)  # the whole block in one compiled call
                if out is not None:
                    return out
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if (self._folded is not None and not torch.is_grad_enabled() and not tracing
                and self._folded.frozen()
                and (self.drop_path is None or not self.drop_path.training)):
            return self._forward_folded(x)

        idx, scores = self.select(x)  # (N, k), (N, k)
        if self.recorder is not None:
            self.recorder.append(idx.detach().cpu())
        xs = gather_channels(x, idx)  # (N, C, H, W) -> (N, k, H, W)
        y = self.branch(xs)  # (N, k, H, W)
        if self.drop_path is not None:
            y = self.drop_path(y)
        s = None if scores is None else scores[:, :, None, None]  # (N, k) -> (N, k, 1, 1)
        # In place only when autograd will not need x and no tracer records the graph.
        inplace = not ((torch.is_grad_enabled() and x.requires_grad) or tracing)
        return self._fuse(x, y, s, idx, inplace)

    def _make_plan(self):
        """The compiled inference plan of ``mmmod/ops/csrc/mod.cpp`` (None without a compiler,
        for random selection, or for a branch the kernel does not take). It is called with
        ``(x, recorder)`` and returns None whenever the block must run as modules: training-mode
        norms, a hooked selector, tracing, an input that is not a float CPU tensor."""
        ops = cpp_module('mod')
        folded = self._folded
        folded.bind()
        if ops is None or folded.cpp_static is None or self.selector is None:
            return None
        tensors, _ = folded.cpp_tensors()
        if not all(t is None or type(t) in (torch.Tensor, nn.Parameter) for t in tensors) or \
                any(tensors[i] is None for i in range(0, len(tensors), 6)):
            return None  # e.g. a pruned conv whose weight is computed by a hook
        fc2 = self.selector.fc2
        return ops.Plan(self.selector.fc1.weight, None if fc2 is None else fc2.weight, tensors,
                        list(folded.norms), self.selector,
                        self.drop_path, *folded.cpp_static, self._fusion_offset, self.k)

    def _apply(self, fn, *args, **kwargs):
        # conversions may replace buffers without registering them: rebuild the plan
        self._plan = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__()
        state['_plan'] = None  # a compiled object: not picklable, rebuilt on first use
        return state

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        """Inference without autograd: the same result as :meth:`forward` with fewer launches.

        Used where the compiled plan does not run (a hooked selector, random selection, no
        compiler, a non-contiguous or half-precision input). With the compiled operator the
        branch and fusion are still one call. Otherwise: norms folded into the branch convs
        (cached), the selector as plain functions (no module calls), the fusion in place into
        ``x``. At batch 1 a block's ~10 small ops
        cost more in dispatch than in arithmetic; that is what MoD loses to its zero-cost
        ceiling.
        """
        folded = self._folded  # frozen() has bound it to the current children
        selector = self.selector
        hooked = selector is not None and _has_hooks(selector)
        ops = cpp_module('mod') if folded.cpp_static is not None else None
        if ops is not None and x.is_cpu and x.dtype in _CPP_DTYPES and x.is_contiguous():
            if selector is not None and not hooked:
                idx, scores = x.new_empty((x.shape[0], self.k), dtype=torch.long), None
                fc1 = selector.fc1.weight
                fc2 = None if selector.fc2 is None else selector.fc2.weight
            else:  # random channels, or a selector whose hooks must see its call
                (idx, scores), fc1, fc2 = self.select(x), None, None
            tensors, eps = folded.cpp_tensors()
            ops.mod_block_(x, idx, scores, fc1, fc2, tensors, eps, *folded.cpp_static,
                           self._fusion_offset)
            if self.recorder is not None:
                self.recorder.append(idx.cpu())
            return x
        folded.refresh()
        if selector is not None and not hooked:
            scores, idx = top_channels(selector.scores(x), self.k)  # (N, C) -> (N, k), (N, k)
        else:
            idx, scores = self.select(x)  # (N, k), (N, k)
        if self.recorder is not None:
            self.recorder.append(idx.cpu())
        y = folded(gather_channels(x, idx))  # (N, k, H, W) -> (N, k, H, W)
        s = None if scores is None else scores[:, :, None, None]  # (N, k) -> (N, k, 1, 1)
        return self._fuse(x, y, s, idx, inplace=True)

    def _fuse(self, x, y, s, idx, inplace: bool) -> torch.Tensor:
        """x (N, C, H, W) + y * s (N, k, H, W) at the fusion positions."""
        k = self.k
        if self.fusion == 'original':
            n, _, h, w = x.shape
            y = y if s is None else y * s
            index = idx[:, :, None, None].expand(n, k, h, w)  # (N, k) -> (N, k, H, W)
            return x.scatter_add_(1, index, y) if inplace else x.scatter_add(1, index, y)
        c = self.channels
        lo, hi = (0, k) if self.fusion == 'first' else (c - k, c)
        if inplace:
            part = x[:, lo:hi]  # a view: the add writes into x
            part.add_(y) if s is None else part.addcmul_(y, s)
            return x
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
