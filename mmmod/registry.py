"""Where mmmod registers its names, and why there.

mmmod registers every class into **mmengine's root registries** (``MODELS``, ``HOOKS``, ...).
mmpretrain, mmseg and mmdet each have their own registries whose parent is that root, and
``Registry.get`` walks from the current scope's registry up to its parent when a name is not
found locally. So a config of any of the three libraries -- including the recipes shipped inside
them (``_base_ = 'mmdet::...'``) -- builds ``dict(type='ResNetMoD')`` under its own
``default_scope`` once ``custom_imports=dict(imports=['mmmod'])`` has imported the package, and no
downstream library has to be importable for mmmod to register.

The alternative, a child registry with scope ``'mmmod'``, would force users to write
``type='mmmod.ResNetMoD'`` in mmdet/mmseg/mmpretrain configs, because sibling scopes are not
searched. mmmod's names are prefixed/unique (``ResNetMoD``, ``LatencyHook``, ...) so they never
shadow a downstream name.
"""
from mmengine.registry import (DATASETS, HOOKS, METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS,
                               TRANSFORMS)

__all__ = ['MODELS', 'HOOKS', 'DATASETS', 'METRICS', 'TRANSFORMS', 'OPTIM_WRAPPER_CONSTRUCTORS']
