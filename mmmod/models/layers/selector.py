"""Scoring channels from pooled context, and choosing how many to keep.

Written once for all methods: CNN-MoD's Channel Selector (FC -> ReLU -> FC -> sigmoid, Sec. 3.1 of
the CNN-MoD paper), Pick-or-Mix's sampling probabilities (one FC -> sigmoid) and the other
channel-scoring modules all score a feature map from its per-channel spatial mean.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def num_selected_channels(channels: int, c: int) -> int:
    """Number of channels a MoD block processes: ``k = max(1, floor(C / c))``.

    The paper (Sec. 2) defines ``k = floor(C / c)``; the ``max(1, .)`` keeps narrow layers
    (e.g. MobileNetV2's 24-channel stage with ``c = 16``) processing at least one channel.

    Args:
        channels (int): C, the channels of the block input.
        c (int): the reduction hyper-parameter, ``c >= 1``.

    Returns:
        int: k, with ``1 <= k <= C``.

    Example:
        >>> num_selected_channels(1024, 64), num_selected_channels(24, 16)
        (16, 1)
    """
    if not isinstance(c, int) or isinstance(c, bool) or c < 1:
        raise ValueError(f'the MoD reduction c must be an integer >= 1, got {c!r}')
    if channels < 1:
        raise ValueError(f'channels must be >= 1, got {channels}')
    return max(1, channels // c)


class ChannelScorer(nn.Module):
    """Per-sample channel scores in (0, 1) from the spatial mean of a feature map.

    ``pool -> FC(C -> hidden) -> ReLU -> FC(hidden -> out)`` (or a single ``FC(C -> out)`` when
    ``hidden_channels`` is None) ``-> sigmoid``; the FC layers have no bias, as in the CNN-MoD
    appendix. Used as CNN-MoD's Channel Selector with ``hidden = C // 16`` and ``out = C``.

    Args:
        in_channels (int): C, channels of the input feature map.
        out_channels (int, optional): number of scores. Defaults to ``in_channels``.
        hidden_channels (int, optional): bottleneck width; None for a single FC layer.

    Shapes:
        x: (N, C, H, W) -> scores: (N, out_channels)

    Example:
        >>> scorer = ChannelScorer(256, hidden_channels=256 // 16)
        >>> scorer(torch.rand(2, 256, 7, 7)).shape
        torch.Size([2, 256])
    """

    def __init__(self, in_channels: int, out_channels=None, hidden_channels=None):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        if hidden_channels is None:
            self.fc1 = nn.Linear(in_channels, out_channels, bias=False)
            self.fc2 = None
        else:
            hidden_channels = max(1, int(hidden_channels))
            self.fc1 = nn.Linear(in_channels, hidden_channels, bias=False)
            self.fc2 = nn.Linear(hidden_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects (N, {self.in_channels}, H, W) input, '
                             f'got {tuple(x.shape)}')
        return self.scores(x)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without the input check, for callers that checked already.

        F.linear on the weights rather than calling the nn.Linear modules: this runs once per
        block per forward, and module calls cost more than the tiny matmuls themselves.
        """
        s = x.mean((2, 3))  # (N, C, H, W) -> (N, C)
        s = F.linear(s, self.fc1.weight)  # (N, C) -> (N, hidden)
        if self.fc2 is not None:
            s = F.linear(s.relu_(), self.fc2.weight)  # (N, hidden) -> (N, out)
        # A fresh tensor from F.linear, so sigmoid can be in place, unless autograd needs it.
        return torch.sigmoid(s) if s.requires_grad else s.sigmoid_()

    def extra_repr(self) -> str:
        return f'{self.in_channels} -> {self.out_channels}'
