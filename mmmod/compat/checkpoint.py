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
- ``numpy.ndarray``, ``numpy.dtype``, ``_reconstruct`` and ``scalar`` -> the inert stand-ins
  of :mod:`mmmod.compat.safe_numpy`: bool and numeric dtypes only (an object array unpickles
  arbitrary objects), each dtype and array state exactly as numpy writes it (numpy's own
  objects take any state: a uint8 dtype flagged as holding objects makes an array of it read
  its bytes as pointers), and ``numpy.ndarray`` only as a name, never called. Neither numpy's
  dtype classes nor ``numpy.ndarray`` are allow-listed. The loaders return the arrays the
  stand-ins built (:func:`~mmmod.compat.safe_numpy.resolve`), never a stand-in.

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

from .safe_numpy import NUMERIC_KINDS, NUMPY_GLOBALS, ArrayStandIn, resolve

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
        # the arrays come as safe_numpy's stand-ins: the arrays they built, or refused
        log, count, max_length = (resolve(state['_log_history']),
                                  resolve(state['_count_history']), state['max_length'])
        for name, array in (('_log_history', log), ('_count_history', count)):
            if type(array) is not np.ndarray or array.dtype.kind not in NUMERIC_KINDS \
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


# Where the unpickler lets BUILD run: on an ArrayStandIn (as on any type among the allowed
# values). A file names a global as 'module.name', always with a dot: this name, without one, no
# file can name, so the class is never on a file's stack; ArrayStandIns come from _reconstruct.
_ARRAY_STAND_IN_NAME = 'mmmod safe_numpy ArrayStandIn (BUILD only, no file can name it)'
assert '.' not in _ARRAY_STAND_IN_NAME


def _safe_globals() -> tuple:
    numpy_names = tuple((standin, f'{module}.{name}')
                        for (module, name), standin in NUMPY_GLOBALS.items())
    return (
        (_HistoryBufferState, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (history_buffer_getattr, 'builtins.getattr'),
        *numpy_names,
        (ArrayStandIn, _ARRAY_STAND_IN_NAME),
    )


#: What mmengine's checkpoints need beyond torch's defaults, as entries for torch's
#: allow-list: objects, or ``(stand-in, 'module.qualname')`` pairs.
SAFE_GLOBALS = _safe_globals()

# Nested and concurrent loads share one activation: the allow-list goes when the last ends.
_lock = threading.Lock()
# [depth, the user's entries set aside (they answer to names of ours), torch.load replaced]
_active = [0, (), None]


@contextlib.contextmanager
def mmengine_checkpoint_loading():
    """Allow :data:`SAFE_GLOBALS` for ``torch.load(weights_only=True)`` inside the block.

    Inside it, ``torch.load`` (and ``torch.serialization.load``) returns the arrays and dtypes
    the numpy stand-ins built (:func:`~mmmod.compat.safe_numpy.resolve`), never a stand-in.
    A user's allow-list entry that answers to one of mmmod's names (``numpy.ndarray``, ...) is
    set aside while the block runs: torch keeps its allow-list in a set, so which of two
    entries of one name wins would be chance. Entries the user allow-listed stay when the block
    ends. A no-op on torch < 2.6, whose ``torch.load`` does not default to
    ``weights_only=True``.

    Example:
        >>> import io
        >>> buffer = io.BytesIO()
        >>> torch.save(dict(loss=HistoryBuffer([0.5, 0.25], [1, 1]), ids=np.arange(2)), buffer)
        >>> _ = buffer.seek(0)
        >>> with mmengine_checkpoint_loading():
        ...     ckpt = torch.load(buffer, weights_only=True)
        >>> float(ckpt['loss'].mean()), ckpt['ids']
        (0.375, array([0, 1]))
    """
    if not hasattr(torch.serialization, 'safe_globals'):
        yield
        return
    with _lock:
        if _active[0] == 0:
            ours = {_name(g) for g in SAFE_GLOBALS}
            present = torch.serialization.get_safe_globals()
            _active[1] = tuple(g for g in present if _name(g) in ours)
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(
                [g for g in present if _name(g) not in ours] + list(SAFE_GLOBALS))
            _active[2] = _resolving_load(torch.load), _resolving_load(torch.serialization.load)
            torch.load, torch.serialization.load = _active[2]
        _active[0] += 1
    try:
        yield
    finally:
        with _lock:
            _active[0] -= 1
            if _active[0] == 0:
                ours = set(map(_key, SAFE_GLOBALS))
                kept = [g for g in torch.serialization.get_safe_globals()
                        if _key(g) not in ours]
                torch.serialization.clear_safe_globals()
                torch.serialization.add_safe_globals(kept + list(_active[1]))
                # put torch's functions back, unless someone replaced ours meanwhile
                if torch.load is _active[2][0]:
                    torch.load = _active[2][0].__wrapped__
                if torch.serialization.load is _active[2][1]:
                    torch.serialization.load = _active[2][1].__wrapped__
                _active[1:] = (), None


def _resolving_load(load):
    """``load``, returning what safe_numpy's stand-ins built instead of the stand-ins."""

    @functools.wraps(load)
    def resolving_load(*args, **kwargs):
        return resolve(load(*args, **kwargs))

    return resolving_load


def _name(entry) -> str:
    """The name an allow-list entry answers to."""
    if isinstance(entry, tuple):
        return entry[1]
    return f'{entry.__module__}.{entry.__qualname__}'


def _key(entry):
    """An allow-list entry's identity: the name it answers to and the object behind it."""
    return _name(entry), id(entry[0] if isinstance(entry, tuple) else entry)


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
            # the arrays, not safe_numpy's stand-ins, also where the loader bypassed torch.load
            return resolve(loader(filename, *args, **kwargs))

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
