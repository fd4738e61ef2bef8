"""The shims today's torch needs under mmengine 0.10.7.

- :mod:`.checkpoint`: mmengine's own checkpoints load under torch's ``weights_only=True``
  default (allow-list installed here, on import).
- :mod:`.dist`: multi-process training on CPU (gloo) and a check for mmcv's compiled ops.
"""
from .checkpoint import (UNSAFE_LOAD_ENV, allow_mmengine_checkpoints,
                         allow_unsafe_checkpoint_loading, mmengine_safe_globals)
from .dist import check_mmcv_ops, revert_sync_bn_cfg, setup_distributed

allow_mmengine_checkpoints()

__all__ = [
    'UNSAFE_LOAD_ENV', 'allow_mmengine_checkpoints', 'allow_unsafe_checkpoint_loading',
    'mmengine_safe_globals', 'check_mmcv_ops', 'revert_sync_bn_cfg', 'setup_distributed'
]
