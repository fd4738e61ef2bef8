"""Compiled CPU operators, built on first use with ``torch.utils.cpp_extension.load``.

The C++ sources ship inside the package (``mmmod/ops/csrc``) and register torch operators
(``torch.ops.<namespace>.<name>``), so ``torch.jit.trace`` and mmengine's FLOP analyzer see the
call. They are compiled once per torch version and checkout into
``~/.cache/mmmod/torch_extensions`` (``MMMOD_CACHE`` moves it); torch's JIT loader recompiles
when a source changes. Without a
compiler (or with ``MMMOD_NO_CPP_OPS=1``) :func:`load_cpp_ops` warns once and returns False; the
callers then run their pure-PyTorch implementations.
"""
import hashlib
import os
import os.path as osp
import sys
import warnings
from typing import Dict

import torch

CSRC = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc')
_LOADED: Dict[str, bool] = {}


def extension_dir() -> str:
    """Where compiled operators are cached: per Python and torch version (ABI) and per mmmod
    checkout -- the build commands name the source and include paths, so two checkouts (or
    environments) sharing one folder would rebuild over each other's libraries."""
    root = os.environ.get('MMMOD_CACHE', osp.join(osp.expanduser('~'), '.cache', 'mmmod'))
    where = hashlib.sha1(f'{CSRC}|{torch.__file__}'.encode()).hexdigest()[:8]
    tag = f'py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}-{where}'
    return osp.join(root, 'torch_extensions', tag)


def load_cpp_ops(name: str, verbose: bool = False) -> bool:
    """Compile (first call) and load ``csrc/<name>.cpp``; True when its operators are usable.

    Args:
        name (str): source file stem, e.g. ``'pix'``; it registers ``torch.ops.mmmod_<name>``.
        verbose (bool): print the compiler's output.
    """
    if name in _LOADED:
        return _LOADED[name]
    ok = False
    if os.environ.get('MMMOD_NO_CPP_OPS', '0') not in ('', '0'):
        warnings.warn(f'MMMOD_NO_CPP_OPS is set: mmmod_{name} runs its slower pure-PyTorch '
                      'implementation')
    else:
        try:
            from torch.utils.cpp_extension import load
            build_dir = osp.join(extension_dir(), name)
            os.makedirs(build_dir, exist_ok=True)
            load(name=f'mmmod_{name}', sources=[osp.join(CSRC, f'{name}.cpp')],
                 # -fopenmp: at::parallel_for is header code, serial without it; the
                 # libgomp.so.1 it links is the one torch already loaded (same soname)
                 extra_cflags=['-O3', '-fopenmp'], extra_ldflags=['-fopenmp'],
                 build_directory=build_dir, is_python_module=False,
                 verbose=verbose)
            ok = True
        except Exception as e:  # no compiler, no ninja, no headers: fall back, but say so
            warnings.warn(f'could not compile the C++ operator mmmod_{name} ({type(e).__name__}: '
                          f'{str(e).strip()[-300:]}); using the slower pure-PyTorch '
                          'implementation. It needs a C++ compiler and ninja (pip install '
                          'ninja).')
    _LOADED[name] = ok
    return ok
