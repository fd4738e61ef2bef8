"""mmmod: dynamic-channel CNN backbones for mmpretrain, mmsegmentation and mmdet.

``import mmmod`` (or ``custom_imports=dict(imports=['mmmod'])`` in a config) registers every
backbone, hook and dataset helper in mmengine's root registries (see :mod:`mmmod.registry`) and
wraps mmengine's checkpoint loaders so that they read mmengine's own checkpoints under torch's
``weights_only`` (see :mod:`mmmod.compat.checkpoint`).
"""
from . import compat  # noqa: F401  (first: mmengine checkpoints load safely)
from . import datasets  # noqa: F401  (registers the CheckSegMapShape transform)
from . import engine  # noqa: F401  (registers the hooks)
from . import models  # noqa: F401
from .version import __version__

__all__ = ['__version__']
