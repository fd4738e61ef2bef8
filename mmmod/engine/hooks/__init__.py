"""Hooks any mmpretrain / mmseg / mmdet config adds through ``custom_hooks``."""
from .gate_hooks import GateStatsHook, GateTargetHook
from .latency_hook import LatencyHook

__all__ = ['LatencyHook', 'GateTargetHook', 'GateStatsHook']
