"""mmmod: dynamic-channel CNN backbones for mmpretrain, mmsegmentation and mmdet.

``import mmmod`` (or ``custom_imports=dict(imports=['mmmod'])`` in a config) registers every
backbone, hook and dataset helper in mmengine's root registries (see :mod:`mmmod.registry`) and
installs the checkpoint-loading shim today's torch needs (see :mod:`mmmod.compat`).
"""
from . import compat  # noqa: F401  (first: allow-lists mmengine checkpoint types for torch.load)
from . import engine  # noqa: F401  (registers the hooks)
from . import models  # noqa: F401
from .version import __version__

__all__ = ['__version__']
