"""Load mmengine's own checkpoints under torch's ``weights_only=True`` default, safely.

Since torch 2.6, ``torch.load`` without an explicit ``weights_only`` uses a restricted
unpickler that rebuilds tensors and plain containers only. mmengine 0.10.7 calls
``torch.load(filename, map_location=...)`` in its checkpoint loaders and so inherits that
default, but its checkpoints hold more than tensors: the ``message_hub`` entry stores the
logged scalars as :class:`~mmengine.logging.HistoryBuffer` objects, which wrap numpy arrays and
(through ``HistoryBuffer.__getstate__``) the class's statistics methods, pickled as
``getattr(HistoryBuffer, 'min')``; ``runtime_info`` may hold numpy scalars (an mmseg metric
kept as ``best_score`` by ``CheckpointHook(save_best=...)``). Without help, ``resume=True``,
``load_from`` and ``tools/test.py CFG CKPT`` fail with ``UnpicklingError: Unsupported global:
GLOBAL mmengine.logging.history_buffer.HistoryBuffer``. mmengine 0.11 answers by passing
``weights_only=False``, which lets any checkpoint run arbitrary code on load.

Here torch's restricted unpickler stays on and learns, while mmengine loads a checkpoint and
at no other time, exactly what mmengine writes -- each through a stand-in of mmmod's own that
validates what it rebuilds:

- ``HistoryBuffer`` -> :class:`_HistoryBufferState`: built from its state by mmmod's own
  reconstructor (numeric 1-d arrays, a positive ``max_length``, statistics names among
  mmengine's four with their own functions), never through mmengine's ``__setstate__``, which
  updates the CLASS-level ``_statistics_methods`` dict with whatever the file says.
- ``builtins.getattr`` -> :func:`history_buffer_getattr`: only ``HistoryBuffer.<name>`` for a
  name of the fixed set :data:`STATISTICS` (none begins with ``_``). With a general getattr a
  pickle walks from any allowed object to ``__globals__`` and the builtins, and torch's allowed
  ``_rebuild_from_type_v2`` calls what it finds.
- ``numpy.dtype``, ``_reconstruct`` and ``scalar`` -> wrappers that refuse every dtype but
  bool and numbers (an object array unpickles arbitrary objects).

The allow-list is the constant :data:`SAFE_GLOBALS`: no file can extend it. It is in force
inside :func:`mmengine_checkpoint_loading`, which wraps every loader of mmengine's
``CheckpointLoader`` (:func:`install_checkpoint_loaders`, run on ``import mmmod``) -- Runner
``resume`` / ``load_from``, ``Pretrained`` init and ``load_checkpoint`` all go through them --
and nowhere else: a plain ``torch.load`` in the user's code sees torch's defaults only.

A local file whose name ends in ``-<hex>.pth`` (``tools/publish_model.py`` and OpenMMLab's
model zoo name files by the first 8 hex digits of their sha256) is verified before it is read:
torch checks no zip CRCs, so a changed byte would otherwise load silently.

A trusted legacy checkpoint holding other objects is loaded by an explicit choice,
:func:`allow_unsafe_checkpoint_loading` (``--unsafe-load-checkpoint`` in ``tools/``), which sets
torch's own switch ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
"""
import contextlib
import functools
import hashlib
import os
import os.path as osp
import pickle
import re
import threading

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = [
    'UNSAFE_LOAD_ENV', 'STATISTICS', 'ChecksumError', 'SAFE_GLOBALS',
    'mmengine_checkpoint_loading', 'install_checkpoint_loaders',
    'allow_unsafe_checkpoint_loading', 'history_buffer_getattr', 'verify_checksum', 'sha256_of'
]

#: torch's switch that turns ``weights_only`` off for ``torch.load`` calls that do not pass it.
UNSAFE_LOAD_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'

#: The HistoryBuffer statistics a checkpoint may name: mmengine's defaults. Fixed: no file and
#: no ``HistoryBuffer.register_statistics`` call extends it.
STATISTICS = frozenset(('min', 'max', 'current', 'mean'))
assert not any(name.startswith('_') for name in STATISTICS)

# The instance attributes HistoryBuffer.__getstate__ writes (its __dict__ plus the methods).
_BUFFER_STATE_KEYS = frozenset(('max_length', '_log_history', '_count_history'))
_BUFFER_METHODS_KEY = 'statistics_methods'
# bool, signed/unsigned integers, floats and complex numbers: never object, string or void.
_NUMERIC_KINDS = frozenset('biufc')
# numpy 2 moved ``numpy.core`` to ``numpy._core``; a pickle names the module it was written
# under, so both spellings must resolve to the same functions.
_MULTIARRAY_MODULES = ('numpy._core.multiarray', 'numpy.core.multiarray')
# A sha256 prefix in a file name, as publish_model.py and the model zoo write it.
_HASHED_NAME = re.compile(r'-([0-9a-f]{8,64})\.pth$')


def _refuse(what: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(
        f'{what} is refused while loading a checkpoint: mmmod allows exactly what mmengine '
        'writes (see mmmod/compat/checkpoint.py). Load a trusted checkpoint with '
        f'--unsafe-load-checkpoint ({UNSAFE_LOAD_ENV}=1).')


class _HistoryBufferState:
    """Stand-in for ``HistoryBuffer`` in the unpickler: validates the state, then becomes one.

    The unpickler creates it (NEWOBJ) and hands it the pickled state (BUILD -> ``__setstate__``);
    until then it is an inert object without attributes. Only after its state passed the checks
    does it take HistoryBuffer's class (both are plain classes with a ``__dict__``, so the class
    can be swapped in place, which BUILD requires).
    """

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict) or not _BUFFER_STATE_KEYS <= set(state) or \
                not set(state) <= _BUFFER_STATE_KEYS | {_BUFFER_METHODS_KEY}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise _refuse(f'a HistoryBuffer state with keys {keys} (expected '
                          f'{sorted(_BUFFER_STATE_KEYS)} and optionally {_BUFFER_METHODS_KEY!r})')
        methods = state.get(_BUFFER_METHODS_KEY, {})
        if not isinstance(methods, dict) or any(
                name not in STATISTICS or value is not vars(HistoryBuffer)[name]
                for name, value in methods.items()):
            names = sorted(map(repr, methods)) if isinstance(methods, dict) else methods
            raise _refuse(f'HistoryBuffer statistics {names} (valid: {sorted(STATISTICS)}, '
                          'as their own HistoryBuffer methods)')
        log, count, max_length = (state['_log_history'], state['_count_history'],
                                  state['max_length'])
        for name, array in (('_log_history', log), ('_count_history', count)):
            if type(array) is not np.ndarray or array.dtype.kind not in _NUMERIC_KINDS \
                    or array.ndim != 1:
                raise _refuse(f'HistoryBuffer.{name} of type {type(array).__name__} '
                              f'{getattr(array, "dtype", "")} (valid: a 1-d numeric ndarray)')
        if len(log) != len(count) or type(max_length) is not int or max_length < 1:
            raise _refuse(f'a HistoryBuffer with {len(log)} values, {len(count)} counts and '
                          f'max_length={max_length!r} (valid: equal lengths, an int >= 1)')
        self.__dict__.update(max_length=max_length, _log_history=log, _count_history=count)
        self.__class__ = HistoryBuffer
        # what HistoryBuffer() does: the class-level dict gets mmengine's four defaults
        self._set_default_statistics()


def history_buffer_getattr(obj, name):
    """``getattr`` for the unpickler, limited to ``getattr(HistoryBuffer, <statistic>)``.

    Protocol-2 pickles name a method by ``getattr(owner_class, 'name')``; the only methods in
    mmengine's checkpoints are HistoryBuffer's statistics (:data:`STATISTICS`).

    Raises:
        pickle.UnpicklingError: for any other object or attribute.
    """
    if obj in (HistoryBuffer, _HistoryBufferState) and name in STATISTICS:
        return vars(HistoryBuffer)[name]
    allowed = ', '.join(f'HistoryBuffer.{n}' for n in sorted(STATISTICS))
    raise _refuse(f'getattr({obj!r}, {name!r}) (allowed: {allowed})')


def _numeric_dtype(dtype: np.dtype) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
        raise _refuse(f'numpy dtype {dtype!r} (valid: bool and numeric dtypes)')
    return dtype


def _dtype(*args):
    """``numpy.dtype`` as the unpickler calls it (``dtype('f8', False, True)``), numbers only."""
    return _numeric_dtype(np.dtype(*args))


def _multiarray():
    """numpy's multiarray module, wherever this numpy keeps it."""
    core = getattr(np, '_core', None) or np.core
    return core.multiarray


def _reconstruct(subtype, shape, typecode):
    """``numpy.core.multiarray._reconstruct``: plain ndarrays only; the dtype comes in BUILD."""
    if subtype is not np.ndarray:
        raise _refuse(f'an array of type {subtype!r} (valid: numpy.ndarray)')
    return _multiarray()._reconstruct(subtype, shape, typecode)


def _scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar``: a numeric scalar from its bytes."""
    if not isinstance(data, bytes):
        raise _refuse(f'a numpy scalar from {type(data).__name__} (valid: bytes)')
    return _multiarray().scalar(_numeric_dtype(dtype), data)


def _safe_globals() -> tuple:
    # The unpickler sets a dtype's state only on allow-listed types: the concrete numeric dtype
    # classes (numpy.dtypes.Float64DType, ...). Created through _dtype only, or by name, and
    # either way numeric.
    dtype_classes = sorted({type(np.dtype(code)) for code in
                            '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']},
                           key=str)
    functions = [(fn, f'{module}.{name}') for module in _MULTIARRAY_MODULES
                 for fn, name in ((_reconstruct, '_reconstruct'), (_scalar, 'scalar'))]
    return (
        (_HistoryBufferState, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (history_buffer_getattr, 'builtins.getattr'),
        (_dtype, 'numpy.dtype'),
        np.ndarray,
        *dtype_classes,
        *functions,
    )


#: What mmengine's checkpoints need beyond torch's defaults, as entries for torch's
#: allow-list: objects, or ``(stand-in, 'module.qualname')`` pairs.
SAFE_GLOBALS = _safe_globals()

# Nested and concurrent loads share one activation: the allow-list goes when the last ends.
_lock = threading.Lock()
_active = [0, ()]  # [depth, the entries this activation added]


@contextlib.contextmanager
def mmengine_checkpoint_loading():
    """Allow :data:`SAFE_GLOBALS` for ``torch.load(weights_only=True)`` inside the block.

    Entries the user allow-listed already stay when the block ends. A no-op on torch < 2.6,
    whose ``torch.load`` does not default to ``weights_only=True``.

    Example:
        >>> import io
        >>> buffer = io.BytesIO()
        >>> torch.save(dict(loss=HistoryBuffer([0.5, 0.25], [1, 1])), buffer)
        >>> _ = buffer.seek(0)
        >>> with mmengine_checkpoint_loading():
        ...     loss = torch.load(buffer, weights_only=True)['loss']
        >>> float(loss.mean())
        0.375
    """
    if not hasattr(torch.serialization, 'safe_globals'):
        yield
        return
    with _lock:
        if _active[0] == 0:
            present = set(map(_key, torch.serialization.get_safe_globals()))
            _active[1] = tuple(g for g in SAFE_GLOBALS if _key(g) not in present)
            torch.serialization.add_safe_globals(list(_active[1]))
        _active[0] += 1
    try:
        yield
    finally:
        with _lock:
            _active[0] -= 1
            if _active[0] == 0:
                added = set(map(_key, _active[1]))
                kept = [g for g in torch.serialization.get_safe_globals()
                        if _key(g) not in added]
                torch.serialization.clear_safe_globals()
                torch.serialization.add_safe_globals(kept)
                _active[1] = ()


def _key(entry):
    """An allow-list entry's identity: the name it answers to and the object behind it."""
    if isinstance(entry, tuple):
        return entry[1], id(entry[0])
    return f'{entry.__module__}.{entry.__qualname__}', id(entry)


class ChecksumError(ValueError):
    """A checkpoint's bytes do not match the sha256 prefix its file name carries."""


def sha256_of(path: str) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: str) -> bool:
    """Check a file named ``<stem>-<sha256 prefix>.pth`` against its bytes.

    Returns:
        bool: True when the name carries a hash and it matches, False when it carries none.

    Raises:
        ChecksumError: the file's sha256 does not begin with the hash in its name.
    """
    match = _HASHED_NAME.search(osp.basename(path))
    if match is None:
        return False
    expected, actual = match.group(1), sha256_of(path)
    if not actual.startswith(expected):
        raise ChecksumError(
            f'checkpoint {path} is damaged or was changed: its name says sha256 {expected}..., '
            f'its bytes hash to {actual}. Download or copy it again. (If "-{expected}" in the '
            'name is not a hash, rename the file.)')
    return True


def _safe_loader(loader, verify: bool):
    """``loader`` of mmengine's CheckpointLoader, run inside :func:`mmengine_checkpoint_loading`."""

    @functools.wraps(loader)
    def load(filename, *args, **kwargs):
        if verify and osp.isfile(osp.expanduser(filename)):
            verify_checksum(osp.expanduser(filename))
        with mmengine_checkpoint_loading():
            return loader(filename, *args, **kwargs)

    load.mmmod_safe_loader = True
    return load


def install_checkpoint_loaders() -> None:
    """Wrap each loader registered in mmengine's ``CheckpointLoader`` (local files, http(s),
    ``torchvision://``, ...) in :func:`mmengine_checkpoint_loading`; local files are also
    checked by :func:`verify_checksum`. Idempotent."""
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        if not getattr(loader, 'mmmod_safe_loader', False):
            CheckpointLoader.register_scheme(
                prefix, _safe_loader(loader, verify=prefix == ''), force=True)


def allow_unsafe_checkpoint_loading() -> None:
    """Load every later checkpoint with the full pickle unpickler, for this process and its
    children.

    Only for checkpoints from a trusted source: unpickling can run arbitrary code. torch
    honours the switch only where ``torch.load`` is called without ``weights_only``, which is
    how mmengine 0.10.7 calls it.
    """
    os.environ[UNSAFE_LOAD_ENV] = '1'
