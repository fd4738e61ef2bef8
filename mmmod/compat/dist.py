"""Multi-process training without GPUs, and a check for mmcv's compiled ops.

mmengine 0.10.7 assumes a GPU per process once a launcher is given: ``init_dist('pytorch')``
calls ``torch.cuda.set_device(LOCAL_RANK)`` before creating the process group, and
``Runner.wrap_model`` builds ``MMDistributedDataParallel(device_ids=[LOCAL_RANK])``. Both
fail on a CPU-only machine. Two documented seams of the Runner avoid patching it:

- ``Runner.setup_env`` calls ``init_dist`` only ``if self.distributed and not
  is_distributed()``, so a process group created beforehand (gloo) is used as is;
- ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` as a *default* argument of
  ``MODEL_WRAPPERS.build``, so ``model_wrapper_cfg=dict(device_ids=None)`` overrides it, and
  ``device_ids=None`` is what ``DistributedDataParallel`` requires for CPU modules.

:func:`setup_distributed` applies both, and nothing at all when CUDA is available.
"""
import copy
import datetime
import importlib
import os
import os.path as osp

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed
from mmengine.logging import print_log
from mmengine.registry import MODEL_WRAPPERS
from torch.nn.parallel import DistributedDataParallel

__all__ = ['setup_distributed', 'revert_sync_bn_cfg', 'check_mmcv_ops', 'mmcv_wheel_cache']

# The variables torchrun sets for every process; init_process_group('env://') reads them.
TORCHRUN_ENV = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
DEFAULT_WRAPPER = 'MMDistributedDataParallel'
# Norm types that synchronise batch statistics across processes through CUDA:
# torch.nn.SyncBatchNorm raises "SyncBatchNorm expected input tensor to be on GPU" when
# training on CPU, and mmcv's MMSyncBN is a CUDA op. Each maps to its per-process equivalent.
SYNC_NORM_TO_LOCAL = {'SyncBN': 'BN', 'MMSyncBN': 'BN'}


def revert_sync_bn_cfg(cfg_node):
    """A copy of a config tree with every SyncBN norm ``type`` replaced by ``BN``.

    Args:
        cfg_node (dict | list | tuple | Any): e.g. ``cfg.model``.

    Returns:
        The same structure, copied; the input is left untouched.

    Example:
        >>> revert_sync_bn_cfg(dict(backbone=dict(norm_cfg=dict(type='SyncBN'))))
        {'backbone': {'norm_cfg': {'type': 'BN'}}}
    """
    node = copy.deepcopy(cfg_node)
    _revert_sync_bn_in_place(node)
    return node


def _revert_sync_bn_in_place(node):
    if isinstance(node, dict):
        if node.get('type') in SYNC_NORM_TO_LOCAL:
            node['type'] = SYNC_NORM_TO_LOCAL[node['type']]
        children = node.values()
    elif isinstance(node, (list, tuple)):
        children = node
    else:
        return
    for child in children:
        _revert_sync_bn_in_place(child)


def _cpu_model_wrapper_cfg(cfg) -> dict:
    """The model wrapper config the Runner would use, with ``device_ids=None`` for CPU."""
    wrapper_cfg = copy.deepcopy(cfg.get('model_wrapper_cfg'))
    if wrapper_cfg is None:
        # The wrapper Runner.wrap_model builds when the config names none.
        wrapper_cfg = dict(
            type=DEFAULT_WRAPPER,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper_cfg.setdefault('type', DEFAULT_WRAPPER)
    with MODEL_WRAPPERS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
        wrapper_cls = registry.get(wrapper_cfg['type'])
    # The Runner gives device_ids only to DistributedDataParallel subclasses (not to FSDP).
    if isinstance(wrapper_cls, type) and issubclass(wrapper_cls, DistributedDataParallel):
        wrapper_cfg['device_ids'] = None
    return wrapper_cfg


def _init_gloo_from_torchrun(dist_cfg: dict) -> None:
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise RuntimeError(
            f'launcher="pytorch" needs the environment torchrun sets; missing {missing}. '
            'Start the job with tools/dist_train.sh or tools/dist_test.sh.')
    kwargs = {}
    if dist_cfg.get('timeout') is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
    torch_dist.init_process_group(
        backend='gloo',
        rank=int(os.environ['RANK']),
        world_size=int(os.environ['WORLD_SIZE']),
        **kwargs)


def setup_distributed(cfg, launcher: str = 'none'):
    """Prepare a distributed run on a machine without CUDA; leave any other run untouched.

    On CPU with ``launcher='pytorch'`` this initialises ``torch.distributed`` with the
    ``gloo`` backend from torchrun's environment (the Runner then skips its own CUDA-bound
    ``init_dist``) and returns a copy of ``cfg`` with:

    - ``env_cfg.dist_cfg.backend = 'gloo'`` (upstream runtimes say ``nccl``),
    - ``model_wrapper_cfg.device_ids = None`` (DDP over CPU modules),
    - SyncBN norm configs in ``cfg.model`` turned into BN, and ``cfg.sync_bn`` dropped.

    Args:
        cfg (mmengine.Config): The run's config; not modified.
        launcher (str): ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.

    Returns:
        mmengine.Config: ``cfg`` itself when nothing needs changing, otherwise a copy.

    Raises:
        RuntimeError: for ``slurm``/``mpi`` on CPU, whose mmengine launchers need CUDA, or
            when torchrun's environment variables are missing.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return cfg
    if launcher != 'pytorch':
        raise RuntimeError(
            f'Distributed training on CPU supports launcher="pytorch" (torchrun, '
            f'tools/dist_train.sh) only; mmengine\'s "{launcher}" launcher needs CUDA.')
    cfg = copy.deepcopy(cfg)
    env_cfg = dict(cfg.get('env_cfg') or {})
    dist_cfg = dict(env_cfg.get('dist_cfg') or {})
    dist_cfg['backend'] = 'gloo'
    env_cfg['dist_cfg'] = dist_cfg
    cfg.env_cfg = env_cfg
    if not is_distributed():
        _init_gloo_from_torchrun(dist_cfg)

    cfg.model_wrapper_cfg = _cpu_model_wrapper_cfg(cfg)
    cfg.model = revert_sync_bn_cfg(cfg.model)
    if cfg.get('sync_bn') is not None:
        print_log(f'sync_bn={cfg.sync_bn!r} ignored: SyncBatchNorm needs GPUs.', 'current')
        cfg.sync_bn = None
    return cfg


def mmcv_wheel_cache() -> str:
    """Where ``tools/setup_env.sh`` keeps the mmcv wheels it builds (same rule as there)."""
    cache = os.environ.get('MMMOD_CACHE') or osp.join(
        os.environ.get('XDG_CACHE_HOME') or osp.expanduser('~/.cache'), 'mmmod')
    return osp.join(cache, 'wheels')


def check_mmcv_ops() -> None:
    """Fail early, with the fix, when mmcv's compiled ops cannot be loaded.

    mmdet's two-stage detectors need them (RoIAlign, NMS); without this check the error
    surfaces deep inside model building as ``No module named 'mmcv._ext'``.

    Raises:
        RuntimeError: if ``mmcv._ext`` cannot be imported (mmcv built without ops, e.g. by
            an isolated pip build, or against another torch).
    """
    try:
        importlib.import_module('mmcv._ext')
    except (ImportError, OSError) as err:
        raise RuntimeError(
            f'mmcv\'s compiled ops cannot be loaded ({err}); mmdet models need them '
            '(RoIAlign, NMS). Rebuild mmcv: delete the cached wheel under '
            f'{mmcv_wheel_cache()} and rerun `bash tools/setup_env.sh`.') from err
