"""Training/testing machinery: hooks and the gate optimizer constructor (registered on import)
and the tools' runner helpers (:mod:`mmmod.engine.runner`, imported by the tools, not here)."""
from .gate_optim_constructor import GateOptimWrapperConstructor
from .gated_model import find_gated_backbone, unwrap_model
from .hooks import CheckpointMatchHook, GateStatsHook, GateTargetHook, LatencyHook

__all__ = ['LatencyHook', 'GateTargetHook', 'GateStatsHook', 'CheckpointMatchHook',
           'GateOptimWrapperConstructor', 'find_gated_backbone', 'unwrap_model']
