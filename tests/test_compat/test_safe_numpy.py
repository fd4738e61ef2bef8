"""The numpy stand-ins: exactly what numpy writes is rebuilt, and nothing else."""
import io
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from mmmod.compat.safe_numpy import (NDARRAY, NUMPY_GLOBALS, ArrayStandIn, DtypeStandIn,
                                     RefusedNumpyState, reconstruct, resolve, scalar)


class Unpickler(pickle.Unpickler):

    def find_class(self, module, name):
        return NUMPY_GLOBALS[module, name]


def load(obj, protocol=4):
    return resolve(Unpickler(io.BytesIO(pickle.dumps(obj, protocol=protocol))).load())


def built_array(values, dtype):
    array = np.asarray(values, dtype)
    standin = reconstruct(NDARRAY, (0, ), b'b')
    standin.__setstate__(array.__reduce__()[2][:2] + (built_dtype(dtype), ) +
                         array.__reduce__()[2][3:])
    return standin


def built_dtype(code):
    dtype = np.dtype(code)
    standin = DtypeStandIn(*dtype.__reduce__()[1])
    standin.__setstate__(dtype.__reduce__()[2])
    return standin


@pytest.mark.parametrize('value', [
    np.arange(6, dtype=np.float64).reshape(2, 3), np.asfortranarray(np.ones((2, 3), np.int8)),
    np.arange(3, dtype='>u2'), np.array(2.5, np.float16), np.zeros(0, np.complex64),
    np.array([True, False]), np.float32(1.5), np.int64(-3), np.dtype('<f4'), np.dtype('>i8')])
def test_what_numpy_writes_round_trips(value):
    loaded = load(value)
    assert type(loaded) is type(value)
    if isinstance(value, np.dtype):
        assert loaded == value and loaded.str == value.str
        return
    assert loaded.dtype == value.dtype and loaded.dtype.str == value.dtype.str
    np.testing.assert_array_equal(loaded, value)
    if isinstance(value, np.ndarray):
        assert loaded.flags.f_contiguous == value.flags.f_contiguous and loaded.flags.writeable


def test_resolve_walks_containers_in_place():
    shared = [built_array([1, 2], 'i4')]
    ordered = OrderedDict(a=built_array([1.0], 'f8'))
    ordered.attr = built_dtype('u1')  # BUILD sets an OrderedDict's attributes
    nested = dict(lists=shared, again=shared, tuples=(1, (built_dtype('f2'), )),
                  keys={built_dtype('i2'): 'dtype key'}, ordered=ordered,
                  sets={built_dtype('u2')}, frozen=frozenset([built_dtype('u4')]))
    out = resolve(nested)
    assert out is nested and out['lists'] is out['again'] is shared
    assert type(shared[0]) is np.ndarray and shared[0].tolist() == [1, 2]
    assert out['tuples'] == (1, (np.dtype('f2'), ))
    assert list(out['keys']) == [np.dtype('i2')]
    assert out['ordered'] is ordered and type(ordered['a']) is np.ndarray
    assert ordered.attr == np.dtype('u1')
    assert out['sets'] == {np.dtype('u2')} and out['frozen'] == frozenset([np.dtype('u4')])


def test_resolve_keeps_cycles():
    cycle = [built_array([3], 'u1')]
    cycle.append(cycle)
    assert resolve(cycle) is cycle and cycle[1] is cycle and cycle[0].tolist() == [3]


def test_resolve_refuses_what_it_cannot_replace():
    holder = []
    cyclic = (holder, built_array([1], 'u1'))
    holder.append(cyclic)  # a tuple that holds itself cannot be rebuilt in place
    with pytest.raises(RefusedNumpyState, match='in a tuple that cannot be rebuilt'):
        resolve(cyclic)
    with pytest.raises(RefusedNumpyState, match='an ndarray without its state'):
        resolve([reconstruct(NDARRAY, (0, ), b'b')])
    with pytest.raises(RefusedNumpyState, match='a numpy.dtype without its code'):
        resolve([DtypeStandIn.__new__(DtypeStandIn)])  # as NEWOBJ makes it


@pytest.mark.parametrize('args', [('O', False, True), ('U3', False, True), ('i4,f8', False, True),
                                  ('M8', False, True), (('f8', (2, )), False, True), ('f8', ),
                                  ('f8', 2, True), (np.float64, False, True), ('zz', 0, 1)])
def test_dtype_numbers_only_as_numpy_writes(args):
    with pytest.raises(RefusedNumpyState, match=r'numpy\.dtype.* is refused'):
        DtypeStandIn(*args)


def test_dtype_state_exactly_as_numpy_writes():
    standin = DtypeStandIn('f8', False, True)
    flagged = np.dtype('f8').__reduce__()[2][:-1] + (63, )
    with pytest.raises(RefusedNumpyState, match=r"of numpy\.dtype\('<f8'\) is refused \(numpy "
                       r"writes \(3, '<', .*\) or \(3, '>', .*\)\)"):
        standin.__setstate__(flagged)
    assert standin.dtype == np.dtype('f8') and not standin.dtype.hasobject


def test_array_state_checked():
    dtype = built_dtype('u1')
    standin = reconstruct(NDARRAY, (0, ), b'b')
    for state in [(2, (1, ), dtype, False, b'\0'), (1, [1], dtype, False, b'\0'),
                  (1, (1, ), np.dtype('u1'), False, b'\0'), (1, (-1, ), dtype, False, b''),
                  (1, (1, ), dtype, False, [0]), (1, (1, ), dtype), None]:
        with pytest.raises(RefusedNumpyState, match='an ndarray state'):
            standin.__setstate__(state)
    standin.__setstate__((1, (1, ), dtype, False, b'\x07'))
    with pytest.raises(RefusedNumpyState, match='a second state for an ndarray'):
        standin.__setstate__((1, (1, ), dtype, False, b'\x08'))
    assert standin.resolved().tolist() == [7]
    with pytest.raises(TypeError, match='unhashable'):
        {standin}


def test_reconstruct_ndarray_scalar_refusals():
    for args in [(np.ndarray, (0, ), b'b'), (NDARRAY, (2, ), b'b'), (NDARRAY, (0, ), b'O')]:
        with pytest.raises(RefusedNumpyState, match=r'_reconstruct\(.* is refused'):
            reconstruct(*args)
    with pytest.raises(RefusedNumpyState, match=r"numpy\.ndarray\(\(2,\), 'O'\) is refused"):
        NDARRAY((2, ), 'O')
    for dtype, data in [(np.dtype('f8'), bytes(8)), (built_dtype('f8'), bytes(4)),
                        (built_dtype('f8'), 'x' * 8)]:
        with pytest.raises(RefusedNumpyState, match='a numpy scalar'):
            scalar(dtype, data)
    assert isinstance(ArrayStandIn(), ArrayStandIn)  # inert until BUILD
