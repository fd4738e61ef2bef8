"""Hooks any mmpretrain / mmseg / mmdet config adds through ``custom_hooks``."""
from .channel_bandit_hook import ChannelBanditHook, bandit_backbones
from .checkpoint_match_hook import CheckpointMatchHook, CheckpointMismatchError
from .gate_hooks import GateStatsHook, GateTargetHook
from .latency_hook import LatencyHook

__all__ = [
    'LatencyHook', 'GateTargetHook', 'GateStatsHook', 'CheckpointMatchHook',
    'CheckpointMismatchError', 'ChannelBanditHook', 'bandit_backbones'
]
