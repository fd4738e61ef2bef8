"""Pick-or-Mix (PiX): dynamic channel sampling that squeezes C channels to ceil(C / zeta).

Kumar, Kim, Park, Behera, "Pick-or-Mix: Dynamic Channel Sampling for ConvNets" (CVPR 2024),
Sec. 3 and Fig. 2, with the details the authors' released code settles::

    x (N, C, H, W) --> mean over H, W --> FC(C -> G, no bias) --> sigmoid --> p (N, G)
      |                                                                       |
      +--> groups of zeta contiguous channels (N, G, <=zeta, H, W) --> per (n, g):
               p < tau: p * Max over the group    (pick, per pixel)
               else:    p * Avg over the group    (mix, per pixel)   --> y (N, G, H, W)

with ``G = ceil(C / zeta)``; the last group is shorter when zeta does not divide C, and its Avg
is its sum divided by zeta (the authors' kernel). The input is post-ReLU, so the spatial mean is
the paper's l1 norm / HW (Eq. 1). The Max-or-Avg choice is per sample and per output channel;
the reductions are per pixel. Gradients: the Max branch sends ``p * g`` to the arg-max channel
only (ties: the first channel of the group, as ``torch.argmax``), the Avg branch ``p * g / zeta``
to every channel of the group, p receives the reduced value times g summed over space, and
nothing flows through the switch. The threshold is ``p < tau`` (the authors' kernel; Eq. 2 of
the paper writes ``<=``, which differs only when p equals tau exactly).

Three implementations, one result:

* :func:`pix_reference` -- plain PyTorch with autograd (both reductions, then a select): the
  specification the tests compare against, and the training fallback where the C++ operator
  is missing (no compiler, CUDA tensors, half precision);
* :func:`pix_naive` -- both reductions then a select, without the exact tie gradient: the
  inference fallback and the benchmark's baseline;
* :func:`pick_or_mix` -- the fast operator ``torch.ops.mmmod_pix`` (``mmmod/ops/csrc/pix.cpp``,
  compiled on first use): one pass over x running only the chosen reduction per (sample,
  group); for backward it keeps the unscaled reduction (N, G, H, W) and the arg-max within each
  group as uint8, never x itself.
"""
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .selector import ChannelScorer

PIX_MODES = ('pix', 'avg', 'max')
_MODE_IDS = {'pix': 0, 'avg': 1, 'max': 2}  # as pix.cpp's mode argument


def _check_pix_args(zeta, tau, mode) -> None:
    if not isinstance(zeta, int) or isinstance(zeta, bool) or zeta < 1:
        raise ValueError(f'the PiX sampling factor zeta must be an integer >= 1, got {zeta!r}')
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < 1:
        raise ValueError(f'the PiX threshold tau must be a number in (0, 1), got {tau!r}')
    if mode not in PIX_MODES:
        raise ValueError(f'the PiX mode must be one of {list(PIX_MODES)}, got {mode!r}')


def pix_groups(channels: int, zeta: int) -> int:
    """Output channels of PiX: ``ceil(C / zeta)``.

    Example:
        >>> pix_groups(256, 4), pix_groups(10, 4), pix_groups(64, 1)
        (64, 3, 64)
    """
    _check_pix_args(zeta, 0.5, 'pix')
    return math.ceil(channels / zeta)


def _use_max(p: torch.Tensor, tau: float, mode: str) -> torch.Tensor:
    """Which (sample, group) picks the Max: (N, G) bool."""
    if mode == 'pix':
        return p < tau
    return torch.full_like(p, mode == 'max', dtype=torch.bool)


def pix_reference(x: torch.Tensor, p: torch.Tensor, zeta: int, tau: float = 0.5,
                  mode: str = 'pix') -> torch.Tensor:
    """PiX sampling in plain PyTorch (autograd gives the gradients): the specification.

    Args:
        x (Tensor): (N, C, H, W).
        p (Tensor): (N, G) sampling probabilities, ``G = ceil(C / zeta)``.
        zeta (int): channels per group.
        tau (float): p below tau picks the Max, else mixes (Avg). Default 0.5.
        mode (str): ``'pix'``, or ``'avg'`` / ``'max'`` for every group.

    Returns:
        Tensor: (N, G, H, W).

    Example:
        >>> x = torch.tensor([1., 3., 2., 6.]).view(1, 4, 1, 1)
        >>> pix_reference(x, torch.tensor([[0.4, 0.8]]), zeta=2).flatten()  # [.4 * 3, .8 * 4]
        tensor([1.2000, 3.2000])
    """
    _check_pix_args(zeta, tau, mode)
    n, c, h, w = x.shape
    g = math.ceil(c / zeta)
    if p.shape != (n, g):
        raise ValueError(f'p must be (N, ceil(C / zeta)) = {(n, g)}, got {tuple(p.shape)}')
    pad = g * zeta - c  # the last group is short by this many channels
    # Avg: missing channels add 0, and the sum is divided by zeta (the authors' kernel).
    summed = F.pad(x, (0, 0, 0, 0, 0, pad)).view(n, g, zeta, h, w).sum(2)  # -> (N, G, H, W)
    avg = summed / zeta
    # Max: missing channels can never win; gather at argmax so ties send the gradient to the
    # first channel only (torch.argmax returns the first maximal index).
    xm = F.pad(x, (0, 0, 0, 0, 0, pad), value=float('-inf')).view(n, g, zeta, h, w)
    arg = xm.argmax(2, keepdim=True)  # (N, G, 1, H, W) index within the group
    mx = xm.gather(2, arg).squeeze(2)  # (N, G, zeta, H, W) -> (N, G, H, W)
    value = torch.where(_use_max(p, tau, mode)[:, :, None, None], mx, avg)  # (N, G, H, W)
    return p[:, :, None, None] * value


def pix_naive(x: torch.Tensor, p: torch.Tensor, zeta: int, tau: float = 0.5,
              mode: str = 'pix') -> torch.Tensor:
    """PiX forward as PyTorch ops would naively write it: Max and Avg of every group, then a
    select -- two full passes over x. Same values as :func:`pix_reference` (its gradient differs
    on ties: ``amax`` splits it between equal maxima). Used without autograd where the compiled
    operator is missing, and as the baseline of ``tools/benchmark_pix.py``.

    Example:
        >>> x = torch.tensor([1., 3., 2., 6.]).view(1, 4, 1, 1)
        >>> pix_naive(x, torch.tensor([[0.4, 0.8]]), zeta=2).flatten()
        tensor([1.2000, 3.2000])
    """
    n, c, h, w = x.shape
    g = math.ceil(c / zeta)
    pad = g * zeta - c
    if pad:  # rare (C % zeta != 0): pad once per reduction
        mx = F.pad(x, (0, 0, 0, 0, 0, pad), value=float('-inf')).view(n, g, zeta, h, w).amax(2)
        avg = F.pad(x, (0, 0, 0, 0, 0, pad)).view(n, g, zeta, h, w).sum(2) / zeta
    else:
        groups = x.view(n, g, zeta, h, w)  # (N, C, H, W) -> (N, G, zeta, H, W)
        mx, avg = groups.amax(2), groups.mean(2)  # (N, G, H, W) each
    value = torch.where(_use_max(p, tau, mode)[:, :, None, None], mx, avg)  # (N, G, H, W)
    return p[:, :, None, None] * value


_WARNED_FALLBACK = set()


def _fast_op_available(x: torch.Tensor) -> bool:
    if x.device.type != 'cpu' or x.dtype not in (torch.float32, torch.float64):
        if (x.device.type, x.dtype) not in _WARNED_FALLBACK:
            _WARNED_FALLBACK.add((x.device.type, x.dtype))
            warnings.warn(f'PiX has a compiled operator for float32/float64 CPU tensors only; '
                          f'{x.dtype} on {x.device.type} runs the pure-PyTorch reference')
        return False
    from mmmod.ops import load_cpp_ops
    return load_cpp_ops('pix')


class _PiXFunction(torch.autograd.Function):
    """The compiled operator with the gradients of the module docstring."""

    @staticmethod
    def forward(ctx, x, p, zeta, tau, mode_id):
        y, v, idx = torch.ops.mmmod_pix.pix_forward(x, p, zeta, tau, mode_id, True)
        ctx.save_for_backward(p, v, idx)  # v: (N, G, H, W) unscaled; idx: (N, G, H, W) uint8
        ctx.pix_args = (x.shape[1], zeta, tau, mode_id)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        p, v, idx = ctx.saved_tensors
        channels, zeta, tau, mode_id = ctx.pix_args
        grad_x, grad_p = torch.ops.mmmod_pix.pix_backward(grad_y, p, v, idx, channels, zeta,
                                                          tau, mode_id)
        return grad_x, grad_p, None, None, None


def pick_or_mix(x: torch.Tensor, p: torch.Tensor, zeta: int, tau: float = 0.5,
                mode: str = 'pix') -> torch.Tensor:
    """PiX sampling, fast: same arguments, result and gradients as :func:`pix_reference`.

    Without autograd (inference, ``torch.no_grad``) the operator is called directly, which
    ``torch.jit.trace`` records; with autograd it runs inside an ``autograd.Function``.

    Example:
        >>> x = torch.tensor([1., 3., 2., 6.]).view(1, 4, 1, 1)
        >>> pick_or_mix(x, torch.tensor([[0.4, 0.8]]), zeta=2).flatten()
        tensor([1.2000, 3.2000])
    """
    _check_pix_args(zeta, tau, mode)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or p.requires_grad)
    if not _fast_op_available(x):
        return (pix_reference if needs_grad else pix_naive)(x, p, zeta, tau, mode)
    if p.dtype != x.dtype:
        raise ValueError(f'x and p must have the same dtype, got {x.dtype} and {p.dtype}')
    if needs_grad:
        return _PiXFunction.apply(x, p, zeta, float(tau), _MODE_IDS[mode])
    return torch.ops.mmmod_pix.pix_forward(x, p, zeta, float(tau), _MODE_IDS[mode], False)[0]


class PiX(nn.Module):
    """Pick-or-Mix: squeezes (N, C, H, W) to (N, ceil(C / zeta), H, W), see the module docstring.

    Replaces a 1x1 squeeze conv (with its norm and activation) in ResNet bottlenecks; with
    ``zeta = 1`` it is a per-channel gate (Max = Avg = the channel), like SE without the hidden
    layer.

    Args:
        in_channels (int): C.
        zeta (int): sampling factor, channels per group (>= 1).
        tau (float): threshold in (0, 1): p below it picks (Max), else mixes (Avg). Default 0.5.
        mode (str): ``'pix'`` (default), ``'avg'`` or ``'max'`` (the paper's PiX(Avg) and
            PiX(Max) ablations, Table 1: every group mixes / picks).

    Shapes:
        x: (N, C, H, W) -> (N, ceil(C / zeta), H, W)

    Example:
        >>> pix = PiX(256, zeta=4)
        >>> pix(torch.rand(2, 256, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
        >>> pix.scorer.fc1.weight.shape  # the only parameters: FC(C -> ceil(C / zeta))
        torch.Size([64, 256])
    """

    def __init__(self, in_channels: int, zeta: int, tau: float = 0.5, mode: str = 'pix'):
        super().__init__()
        _check_pix_args(zeta, tau, mode)
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive integer, got {in_channels!r}')
        self.in_channels = in_channels
        self.zeta = zeta
        self.tau = float(tau)
        self.mode = mode
        self.out_channels = pix_groups(in_channels, zeta)
        # The sampling probability predictor phi: one FC without bias on the pooled input.
        self.scorer = ChannelScorer(in_channels, self.out_channels)
        self._plan = None  # the compiled inference plan, built on first use without autograd
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier, as the paper (Sec. 3.2) and the authors' code initialise the predictor.
        nn.init.xavier_uniform_(self.scorer.fc1.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            plan = self._plan
            # scorer and sampling in one compiled call; False: a submodule, parameter or buffer
            # was replaced since the plan was built, None: run as modules
            y = False if plan is None else plan(x)
            if y is False:
                plan = self._plan = self._make_plan()
                y = None if plan is None else plan(x)
            if y is not None:
                return y
        p = self.scorer(x)  # (N, C, H, W) -> (N, G)
        return pick_or_mix(x, p, self.zeta, self.tau, self.mode)  # -> (N, G, H, W)

    def _make_plan(self):
        """The compiled inference plan of ``mmmod/ops/csrc/pix.cpp`` (None without a
        compiler, tried again on the next call), called with x; it returns None where the module
        must run as usual (a hooked scorer, tracing, an input that is not a plain float CPU
        tensor) and False once the module's submodules, parameters or buffers changed."""
        from mmmod.ops import cpp_module  # the same module as _fast_op_available's
        ops = cpp_module('pix')
        weight = self.scorer.fc1.weight
        if ops is None or self.scorer.fc2 is not None or type(weight) is not nn.Parameter:
            return None
        # the registration dicts of the module and its scorer: the plan runs only while they
        # hold the objects it was built from
        watched = [d for m in self.modules() for d in (m._modules, m._parameters, m._buffers)]
        return ops.PixPlan(watched, weight, self.scorer, self.zeta, self.tau,
                           _MODE_IDS[self.mode])

    def _apply(self, fn, *args, **kwargs):
        self._plan = None  # conversions replace tensors: free the ones the plan holds now
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__()
        state['_plan'] = None  # a compiled object: not picklable, rebuilt on first use
        return state

    def extra_repr(self) -> str:
        return (f'{self.in_channels} -> {self.out_channels}, zeta={self.zeta}, tau={self.tau}, '
                f'mode={self.mode!r}')
