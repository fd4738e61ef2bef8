"""CPU distributed setup and the mmcv-ops check (the two-process run is in
tests/test_tools/test_dist_train.py)."""
import copy
import importlib
import socket

import pytest
import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.registry import MODEL_WRAPPERS

from mmmod.compat import check_mmcv_ops, revert_sync_bn_cfg, setup_distributed
from mmmod.compat.dist import TORCHRUN_ENV, mmcv_wheel_cache

SYNC_BN = dict(type='SyncBN', requires_grad=True)


def make_cfg(**extra):
    return Config(
        dict(
            default_scope='mmpretrain',
            model=dict(
                type='ImageClassifier',
                backbone=dict(type='ResNet', depth=18, norm_cfg=SYNC_BN),
                neck=[dict(type='FPN', norm_cfg=dict(type='MMSyncBN'))],
                head=dict(type='LinearClsHead', norm_cfg=dict(type='BN'))),
            env_cfg=dict(dist_cfg=dict(backend='nccl', timeout=60)),
            **extra))


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)


@pytest.fixture
def gloo_world_of_one(monkeypatch, cpu_only):
    """torchrun's environment for one process; the group is destroyed afterwards."""
    assert not torch_dist.is_initialized()
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    env = dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(port))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def test_revert_sync_bn_cfg_copies_and_converts():
    cfg = make_cfg()
    original = copy.deepcopy(cfg.model)
    model = revert_sync_bn_cfg(cfg.model)
    assert model.backbone.norm_cfg == dict(type='BN', requires_grad=True)
    assert model.neck[0].norm_cfg.type == 'BN'
    assert model.head.norm_cfg.type == 'BN'
    assert cfg.model == original


def test_no_launcher_untouched(cpu_only):
    cfg = make_cfg()
    assert setup_distributed(cfg, 'none') is cfg


def test_gpu_run_untouched(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = make_cfg()
    assert setup_distributed(cfg, 'pytorch') is cfg
    assert not torch_dist.is_initialized()


def test_cpu_pytorch_launcher_uses_gloo(gloo_world_of_one):
    cfg = make_cfg(sync_bn='torch')
    original = copy.deepcopy(cfg._cfg_dict.to_dict())
    new = setup_distributed(cfg, 'pytorch')

    assert torch_dist.is_initialized() and torch_dist.get_backend() == 'gloo'
    assert new.env_cfg.dist_cfg == dict(backend='gloo', timeout=60)
    assert new.model_wrapper_cfg == dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=False,
        device_ids=None)
    assert new.model.backbone.norm_cfg.type == 'BN'
    assert new.get('sync_bn') is None
    assert cfg._cfg_dict.to_dict() == original


def test_cpu_keeps_configured_wrapper_options(gloo_world_of_one):
    cfg = make_cfg(model_wrapper_cfg=dict(find_unused_parameters=True))
    new = setup_distributed(cfg, 'pytorch')
    assert new.model_wrapper_cfg == dict(
        type='MMDistributedDataParallel', find_unused_parameters=True, device_ids=None)


def test_cpu_non_ddp_wrapper_gets_no_device_ids(gloo_world_of_one):
    assert MODEL_WRAPPERS.get('MMFullyShardedDataParallel') is not None
    cfg = make_cfg(model_wrapper_cfg=dict(type='MMFullyShardedDataParallel'))
    assert 'device_ids' not in setup_distributed(cfg, 'pytorch').model_wrapper_cfg


def test_existing_process_group_is_reused(gloo_world_of_one):
    setup_distributed(make_cfg(), 'pytorch')
    group = torch_dist.group.WORLD
    setup_distributed(make_cfg(), 'pytorch')
    assert torch_dist.group.WORLD is group


@pytest.mark.parametrize('launcher', ['slurm', 'mpi'])
def test_cpu_other_launchers_refused(cpu_only, launcher):
    with pytest.raises(RuntimeError, match='launcher="pytorch"'):
        setup_distributed(make_cfg(), launcher)


def test_cpu_without_torchrun_env_refused(cpu_only, monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match='dist_train.sh'):
        setup_distributed(make_cfg(), 'pytorch')


def test_check_mmcv_ops_passes_with_compiled_ops():
    pytest.importorskip('mmcv._ext')
    check_mmcv_ops()


def test_check_mmcv_ops_explains_rebuild(monkeypatch, tmp_path):
    real_import = importlib.import_module

    def import_without_ext(name, *args):
        if name == 'mmcv._ext':
            raise ModuleNotFoundError("No module named 'mmcv._ext'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, 'import_module', import_without_ext)
    monkeypatch.setenv('MMMOD_CACHE', str(tmp_path))
    with pytest.raises(RuntimeError, match='rerun `bash tools/setup_env.sh`') as err:
        check_mmcv_ops()
    assert str(tmp_path / 'wheels') in str(err.value)


def test_wheel_cache_default(monkeypatch):
    monkeypatch.delenv('MMMOD_CACHE', raising=False)
    monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    monkeypatch.setenv('HOME', '/home/someone')
    assert mmcv_wheel_cache() == '/home/someone/.cache/mmmod/wheels'
