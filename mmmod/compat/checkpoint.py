"""Load mmengine's own checkpoints under torch's ``weights_only=True`` default.

Since torch 2.6, ``torch.load`` without an explicit ``weights_only`` uses a restricted
unpickler that rebuilds tensors and plain containers only. mmengine 0.10.7 calls
``torch.load(filename, map_location=...)`` in ``mmengine.runner.checkpoint`` and so inherits
that default, but its checkpoints hold more than tensors: the ``message_hub`` entry stores the
logged scalars as :class:`~mmengine.logging.HistoryBuffer` objects, which wrap numpy arrays and
(through ``HistoryBuffer.__getstate__``) the class's statistics methods, pickled as
``getattr(HistoryBuffer, 'min')``; ``runtime_info`` may hold numpy scalars (an mmseg metric
kept as ``best_score`` by ``CheckpointHook(save_best=...)``). ``resume=True``, ``load_from``
and ``tools/test.py CFG CKPT`` therefore fail with ``UnpicklingError: Unsupported global:
GLOBAL mmengine.logging.history_buffer.HistoryBuffer``.

mmengine 0.11 answers this by passing ``weights_only=False``, which lets any checkpoint run
arbitrary code on load. Here the restricted unpickler stays on and learns exactly the types
mmengine writes (:func:`mmengine_safe_globals`); nothing else about ``torch.load`` changes.
``builtins.getattr`` is the one global that cannot be allowed as is: with it a pickle walks
from any allowed object to ``__globals__`` and the builtins, and torch's allowed
``_rebuild_from_type_v2`` calls what it finds. It is bound instead to
:func:`history_buffer_getattr`, which resolves HistoryBuffer's statistics methods only.
A trusted legacy checkpoint holding other objects is loaded by an explicit choice,
:func:`allow_unsafe_checkpoint_loading` (``--unsafe-load-checkpoint`` in ``tools/``), which sets
torch's own switch ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
"""
import os
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.utils import digit_version

__all__ = [
    'UNSAFE_LOAD_ENV', 'mmengine_safe_globals', 'allow_mmengine_checkpoints',
    'allow_unsafe_checkpoint_loading', 'history_buffer_getattr'
]

#: torch's switch that turns ``weights_only`` off for ``torch.load`` calls that do not pass it.
UNSAFE_LOAD_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'

# numpy 2 moved ``numpy.core`` to ``numpy._core``; a pickle names the module it was written
# under, so both spellings must resolve to the same functions.
_MULTIARRAY_MODULES = ('numpy._core.multiarray', 'numpy.core.multiarray')
# numpy's pickle helpers: ``_reconstruct`` rebuilds an ndarray, ``scalar`` a numpy scalar
# (np.float64 metric values kept in runtime_info).
_MULTIARRAY_FUNCTIONS = ('_reconstruct', 'scalar')
# The numpy dtypes a HistoryBuffer or a metric value can hold: bool and numbers, never object
# or string dtypes.
_DTYPE_CODES = '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']
# HistoryBuffer._set_default_statistics registers these; more come from register_statistics.
_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')


def history_buffer_getattr(obj, name):
    """``getattr`` for the unpickler, limited to ``getattr(HistoryBuffer, <statistic>)``.

    Protocol-2 pickles name a method by ``getattr(owner_class, 'name')``; the only methods in
    mmengine's checkpoints are HistoryBuffer's statistics methods (min, max, current, mean
    and any registered with ``HistoryBuffer.register_statistics``).

    Raises:
        pickle.UnpicklingError: for any other object or attribute.
    """
    statistics = {*_DEFAULT_STATISTICS, *HistoryBuffer._statistics_methods}
    if obj is HistoryBuffer and name in statistics:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is refused under weights_only: mmmod allows getattr only '
        'for HistoryBuffer statistics methods. Load a trusted checkpoint with '
        f'--unsafe-load-checkpoint ({UNSAFE_LOAD_ENV}=1).')


def _multiarray():
    """numpy's multiarray module, wherever this numpy keeps it."""
    core = getattr(np, '_core', None) or np.core
    return core.multiarray


def mmengine_safe_globals() -> list:
    """The non-tensor globals in a checkpoint written by mmengine's Runner.

    Returns:
        list: Objects and ``(object, 'module.qualname')`` pairs for
        :func:`torch.serialization.add_safe_globals`.
    """
    multiarray = _multiarray()
    functions = [(getattr(multiarray, name), f'{module}.{name}')
                 for module in _MULTIARRAY_MODULES for name in _MULTIARRAY_FUNCTIONS]
    # The unpickler builds a dtype by calling ``numpy.dtype`` and then sets its state, which
    # it only allows on allow-listed types: the concrete class (numpy.dtypes.Float64DType).
    dtype_classes = sorted({type(np.dtype(code)) for code in _DTYPE_CODES}, key=str)
    return [
        HistoryBuffer, (history_buffer_getattr, 'builtins.getattr'), np.ndarray, np.dtype,
        *dtype_classes, *functions
    ]


def allow_mmengine_checkpoints() -> None:
    """Allow-list :func:`mmengine_safe_globals` for ``torch.load(weights_only=True)``.

    Idempotent (torch keeps a set). A no-op before torch 2.6, whose ``torch.load`` does not
    default to ``weights_only=True`` and whose allow-list does not accept named pairs.

    Example:
        >>> import io
        >>> allow_mmengine_checkpoints()
        >>> buffer = io.BytesIO()
        >>> torch.save(dict(loss=HistoryBuffer([0.5, 0.25], [1, 1])), buffer)
        >>> _ = buffer.seek(0)
        >>> float(torch.load(buffer, weights_only=True)['loss'].mean())
        0.375
    """
    if digit_version(torch.__version__) < digit_version('2.6.0'):
        return
    torch.serialization.add_safe_globals(mmengine_safe_globals())


def allow_unsafe_checkpoint_loading() -> None:
    """Load every later checkpoint with the full pickle unpickler, for this process and its
    children.

    Only for checkpoints from a trusted source: unpickling can run arbitrary code. torch
    honours the switch only where ``torch.load`` is called without ``weights_only``, which is
    how mmengine 0.10.7 calls it.
    """
    os.environ[UNSAFE_LOAD_ENV] = '1'
