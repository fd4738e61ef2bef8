"""The shims today's torch needs under mmengine 0.10.7.

- :mod:`.checkpoint`: mmengine's own checkpoints load under torch's ``weights_only=True``
  default, through mmengine's checkpoint loaders (wrapped here, on import); numpy arrays come
  back through validating stand-ins, never numpy's own unpickling. Outside those loads every
  ``torch.load`` in the process is left as torch made it (during one, ``torch.load`` resolves
  the stand-ins too).
- :mod:`.dist`: multi-process training on CPU (gloo) and a check for mmcv's compiled ops.
"""
from .checkpoint import (SAFE_GLOBALS, UNSAFE_LOAD_ENV, ChecksumError,
                         allow_unsafe_checkpoint_loading, install_checkpoint_loaders,
                         mmengine_checkpoint_loading, verify_checksum)
from .dist import check_mmcv_ops, revert_sync_bn_cfg, setup_distributed

install_checkpoint_loaders()

__all__ = [
    'SAFE_GLOBALS', 'UNSAFE_LOAD_ENV', 'ChecksumError', 'allow_unsafe_checkpoint_loading',
    'install_checkpoint_loaders', 'mmengine_checkpoint_loading', 'verify_checksum',
    'check_mmcv_ops', 'revert_sync_bn_cfg', 'setup_distributed'
]
