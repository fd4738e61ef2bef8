"""numpy dtypes, arrays and scalars rebuilt from a pickle without trusting the pickle.

numpy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` and then BUILD with
``(1, shape, dtype, is_fortran, raw bytes)``, a dtype as ``dtype('f8', False, True)`` and then
BUILD with the dtype's state, and a scalar as ``scalar(dtype, raw bytes)``. numpy's own objects
take whatever state a file gives them: a dtype's state sets its flags, so a ``uint8`` dtype can
be flagged as holding Python objects, and an array BUILT with it reads its raw bytes as object
pointers (heap corruption, a crash, possibly code execution). ``numpy.ndarray`` itself, if a
file may call it, makes arrays past every check.

An unpickler that must never run code from a file (CIFAR's batches, mmengine's checkpoints under
``torch.load(weights_only=True)``) resolves numpy's names to the inert stand-ins here instead
(:data:`NUMPY_GLOBALS`):

- ``numpy.ndarray`` -> :data:`NDARRAY`, a name: ``reconstruct``'s first argument and nothing
  else (calling it or creating objects from it is refused);
- ``numpy.dtype`` -> :class:`DtypeStandIn`: bool and numeric dtypes only, and BUILD must give
  exactly the state numpy writes for that dtype (in either byte order);
- ``_reconstruct`` -> :func:`reconstruct`, which returns an :class:`ArrayStandIn`: its BUILD
  state is checked (version, shape, dtype stand-in, order, and exactly shape * itemsize raw
  bytes) and the array is built from the bytes by numpy with the checked dtype;
- ``scalar`` -> :func:`scalar`: a scalar of a dtype stand-in from exactly itemsize bytes.

The numpy objects are never given a file's state: after loading, :func:`resolve` replaces the
stand-ins by the arrays and dtypes they built. Refusals raise :class:`RefusedNumpyState`.

Example:
    >>> import io, pickle
    >>> class Unpickler(pickle.Unpickler):
    ...     def find_class(self, module, name):
    ...         return NUMPY_GLOBALS[module, name]  # KeyError: any other global is refused
    >>> data = pickle.dumps([np.arange(3, dtype=np.int16), np.float64(0.5)], protocol=4)
    >>> array, value = resolve(Unpickler(io.BytesIO(data)).load())
    >>> array, array.dtype, value
    (array([0, 1, 2], dtype=int16), dtype('int16'), np.float64(0.5))
"""
import math
import pickle
import sys
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ['RefusedNumpyState', 'NUMERIC_KINDS', 'MULTIARRAY_MODULES', 'NDARRAY', 'DtypeStandIn',
           'ArrayStandIn', 'reconstruct', 'scalar', 'resolve', 'NUMPY_GLOBALS']

#: bool, signed/unsigned integers, floats and complex numbers: never object, string or void.
NUMERIC_KINDS = frozenset('biufc')
#: numpy 2 moved ``numpy.core`` to ``numpy._core``; a pickle names the module it was written
#: under, so both spellings resolve to the same stand-ins.
MULTIARRAY_MODULES = ('numpy._core.multiarray', 'numpy.core.multiarray')


class RefusedNumpyState(pickle.UnpicklingError):
    """A pickle asks for a numpy object or state numpy itself never writes.

    Attributes:
        what (str): what was refused, e.g. ``"the state (...) of numpy.dtype('|u1')"``.
        valid (str): what numpy writes instead, e.g. ``'numpy writes (3, ...)'``.
    """

    def __init__(self, what: str, valid: str):
        super().__init__(f'{what} is refused ({valid}); only numeric numpy dtypes and arrays '
                         'load, in the state numpy writes')
        self.what, self.valid = what, valid


def short(obj: Any, limit: int = 120) -> str:
    """``repr(obj)``, cut to ``limit`` characters (a file's values can be long)."""
    text = repr(obj)
    return text if len(text) <= limit else f'{text[:limit]}...'


def _multiarray():
    """numpy's multiarray module, wherever this numpy keeps it."""
    core = getattr(np, '_core', None) or np.core
    return core.multiarray


class _NdarrayName:
    """``numpy.ndarray`` in a pickle: only :func:`reconstruct`'s first argument."""
    __slots__ = ()

    def __new__(cls, *args):
        # NEWOBJ on the name calls ``NDARRAY.__new__(NDARRAY, ...)``: only the class makes one
        if cls is not _NdarrayName:
            raise RefusedNumpyState(f'numpy.ndarray.__new__{short(args)}',
                                    "numpy writes numpy.ndarray only in _reconstruct(numpy."
                                    "ndarray, (0,), b'b')")
        return super().__new__(cls)

    def __call__(self, *args, **kwargs):
        # REDUCE calls it: numpy.ndarray(shape, dtype, buffer) would make an array unchecked
        raise RefusedNumpyState(f'numpy.ndarray{short(args)}',
                                "numpy writes numpy.ndarray only in _reconstruct(numpy.ndarray, "
                                "(0,), b'b')")

    def __repr__(self) -> str:
        return 'numpy.ndarray'


#: ``numpy.ndarray`` as a pickle may name it.
NDARRAY = _NdarrayName()


class DtypeStandIn:
    """``numpy.dtype(code, align, copy)`` as numpy pickles it, bool and numbers only.

    ``dtype`` holds the numpy dtype, made by numpy from ``code``; BUILD only compares the
    file's state with what numpy writes for that dtype (native or swapped byte order, which
    picks ``dtype``'s byte order) and never hands the state to numpy.
    """
    __slots__ = ('dtype', )

    def __init__(self, *args):
        # numpy writes (code, False, True); Python 2 wrote (code, 0, 1)
        if len(args) != 3 or type(args[0]) is not str or \
                any(type(flag) not in (bool, int) or flag not in (0, 1) for flag in args[1:]):
            raise RefusedNumpyState(f'numpy.dtype{short(args)}',
                                    "numpy writes numpy.dtype(code, False, True), e.g. "
                                    "('f8', False, True)")
        try:
            dtype = np.dtype(*args)
        except (TypeError, ValueError):
            dtype = None
        if dtype is None or dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or \
                dtype.subdtype is not None:
            raise RefusedNumpyState(f'numpy.dtype{short(args)}', 'valid: bool and numeric dtypes')
        self.dtype = dtype

    def _checked(self) -> np.dtype:
        dtype = getattr(self, 'dtype', None)
        if dtype is None:  # made by NEWOBJ, not by numpy.dtype(code, ...)
            raise RefusedNumpyState('a numpy.dtype without its code',
                                    "numpy writes numpy.dtype(code, False, True)")
        return dtype

    def __setstate__(self, state) -> None:
        dtype = self._checked()
        # numpy writes (3, '<', None, None, None, -1, -1, 0) for f8, '|' for u1
        written = {candidate.__reduce__()[2]: candidate
                   for candidate in (dtype, dtype.newbyteorder())}
        if type(state) is not tuple or state not in written:
            expected = ' or '.join(map(repr, written))
            raise RefusedNumpyState(f'the state {short(state)} of numpy.dtype({dtype.str!r})',
                                    f'numpy writes {expected}')
        self.dtype = written[state]

    def __repr__(self) -> str:
        return f'DtypeStandIn({getattr(self, "dtype", None)!r})'


class ArrayStandIn:
    """An array as numpy pickles it: :func:`reconstruct`, then BUILD with the state
    ``(1, shape, dtype, is_fortran, raw)``: ``shape`` a tuple of sizes, ``dtype`` a
    :class:`DtypeStandIn`, ``raw`` exactly ``prod(shape) * itemsize`` bytes.

    ``array`` holds the (writable) result, shape ``shape``, Fortran order if ``is_fortran``.
    """
    __slots__ = ('array', )
    __hash__ = None  # as an ndarray: no dict key, no set member

    def __setstate__(self, state) -> None:
        if hasattr(self, 'array'):  # BUILD again would change an array already handed out
            raise RefusedNumpyState('a second state for an ndarray',
                                    'numpy writes one BUILD after _reconstruct')
        if type(state) is not tuple or len(state) != 5:
            raise RefusedNumpyState(f'an ndarray state {short(state)}', 'numpy writes '
                                    '(1, shape, dtype, is_fortran, data)')
        version, shape, dtype, fortran, raw = state
        if isinstance(raw, str):  # a Python 2 str, as in the official CIFAR files (latin1)
            raw = raw.encode('latin1')
        if version != 1 or type(shape) is not tuple or \
                not all(type(n) is int and n >= 0 for n in shape) or \
                type(dtype) is not DtypeStandIn or type(fortran) not in (bool, int) or \
                fortran not in (0, 1) or \
                type(raw) is not bytes:
            raise RefusedNumpyState(f'an ndarray state {short(state)}', 'numpy writes '
                                    '(1, shape, dtype, is_fortran, data) with a tuple of sizes '
                                    'and bytes')
        dtype = dtype._checked()
        size = math.prod(shape) * dtype.itemsize
        if len(raw) != size:
            raise RefusedNumpyState(f'an ndarray of shape {shape} {dtype} with {len(raw)} '
                                    'bytes of data', f'needs {size}')
        # numpy reads the bytes as the checked numeric dtype; the copy owns aligned memory
        flat = np.frombuffer(raw, dtype)
        self.array = flat.reshape(shape, order='F' if fortran else 'C').copy(order='K')

    def resolved(self) -> np.ndarray:
        """The array; refused if BUILD never gave the state."""
        if not hasattr(self, 'array'):
            raise RefusedNumpyState('an ndarray without its state',
                                    'numpy writes BUILD after _reconstruct')
        return self.array

    def __repr__(self) -> str:
        return f'ArrayStandIn({getattr(self, "array", "<no state>")!r})'


def reconstruct(subtype, shape, typecode) -> ArrayStandIn:
    """``numpy.core.multiarray._reconstruct`` as numpy calls it when pickling an array."""
    if subtype is not NDARRAY or type(shape) is not tuple or shape != (0, ) or \
            typecode not in (b'b', 'b'):
        raise RefusedNumpyState(f'_reconstruct({short(subtype)}, {short(shape)}, '
                                f'{short(typecode)})',
                                "numpy writes _reconstruct(numpy.ndarray, (0,), b'b')")
    return ArrayStandIn()


def scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar(dtype, raw)``: a numeric scalar from its bytes."""
    if type(dtype) is not DtypeStandIn or type(data) is not bytes or \
            len(data) != dtype._checked().itemsize:
        raise RefusedNumpyState(f'a numpy scalar scalar({short(dtype)}, {short(data)})',
                                'numpy writes scalar(numeric dtype, itemsize bytes)')
    return _multiarray().scalar(dtype.dtype, data)


#: ``(module, name)`` -> the stand-in an unpickler gives for it.
NUMPY_GLOBALS = MappingProxyType({
    ('numpy', 'ndarray'): NDARRAY,
    ('numpy', 'dtype'): DtypeStandIn,
    **{(module, '_reconstruct'): reconstruct for module in MULTIARRAY_MODULES},
    **{(module, 'scalar'): scalar for module in MULTIARRAY_MODULES},
})

# values that hold nothing: not walked
_ATOMS = frozenset((type(None), bool, int, float, complex, str, bytes, bytearray))


def resolve(obj):
    """``obj`` with every stand-in replaced by what it built: :class:`ArrayStandIn` by its
    array, :class:`DtypeStandIn` by its dtype.

    Walks dicts (keys and values), lists, tuples, sets, frozensets and objects' ``__dict__``
    at any depth. Mutable containers are changed in place (so shared and cyclic references stay
    shared); a tuple or frozenset that holds a stand-in is rebuilt.

    Raises:
        RefusedNumpyState: a stand-in that was never BUILT; a stand-in in a tuple subclass or
            in a tuple that contains itself (neither can be rebuilt in place).
    """
    try:
        return _resolve(obj, {})
    except RecursionError:
        raise RefusedNumpyState(f'a structure nested over {sys.getrecursionlimit()} levels '
                                'deep', 'numpy writes none; each level is checked for '
                                'numpy stand-ins') from None


def _resolve(obj, memo: dict):
    kind = type(obj)
    if kind in _ATOMS:
        return obj
    if kind is ArrayStandIn:
        return obj.resolved()
    if kind is DtypeStandIn:
        return obj._checked()
    entry = memo.get(id(obj))
    if entry is not None:  # seen: its result, or itself while its items are walked
        entry[2] = True
        return entry[1]
    entry = memo[id(obj)] = [obj, obj, False]  # [object (kept alive for its id), result, seen]
    if isinstance(obj, (tuple, frozenset)):
        items = [_resolve(item, memo) for item in obj]
        if any(new is not old for new, old in zip(items, obj)):
            if kind not in (tuple, frozenset) or entry[2]:
                raise RefusedNumpyState(f'a numpy array or dtype in a {kind.__name__} that '
                                        'cannot be rebuilt', 'numpy writes arrays in plain '
                                        'containers')
            entry[1] = kind(items)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            new = _resolve(item, memo)
            if new is not item:
                obj[i] = new
    elif isinstance(obj, dict):
        _resolve_dict(obj, memo)
    elif isinstance(obj, set):
        items = [_resolve(item, memo) for item in obj]
        if any(new is not old for new, old in zip(items, obj)):
            obj.clear()
            obj.update(items)
    if not isinstance(obj, type):
        attrs = getattr(obj, '__dict__', None)  # an OrderedDict's, a tensor's attributes
        if type(attrs) is dict:
            _resolve_dict(attrs, memo)
    return entry[1]


def _resolve_dict(mapping: dict, memo: dict) -> None:
    old = list(mapping.items())
    new = [(_resolve(key, memo), _resolve(value, memo)) for key, value in old]
    if any(key is not old_key for (key, _), (old_key, _) in zip(new, old)):
        mapping.clear()  # a key changed: rebuild in place, in order
        mapping.update(new)
        return
    for (key, value), (_, old_value) in zip(new, old):
        if value is not old_value:
            mapping[key] = value
