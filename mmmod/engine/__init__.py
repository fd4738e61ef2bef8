"""Training/testing machinery: hooks (registered on import) and the tools' runner helpers
(:mod:`mmmod.engine.runner`, imported by the tools, not here)."""
from .hooks import LatencyHook

__all__ = ['LatencyHook']
