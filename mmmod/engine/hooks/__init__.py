"""Hooks any mmpretrain / mmseg / mmdet config adds through ``custom_hooks``."""
from .latency_hook import LatencyHook

__all__ = ['LatencyHook']
