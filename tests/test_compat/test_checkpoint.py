"""mmengine's own checkpoints load through mmengine's loaders; nothing else widens torch.load.

The crafted files below are built opcode by opcode (:class:`PickleWriter`) so that each test
says exactly what the file asks the unpickler to do.
"""
import hashlib
import io
import os
import pickle
import re
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint, save_checkpoint
from torch import nn

from mmmod.compat import (SAFE_GLOBALS, UNSAFE_LOAD_ENV, ChecksumError,
                          allow_unsafe_checkpoint_loading, install_checkpoint_loaders,
                          mmengine_checkpoint_loading, verify_checksum)
from mmmod.compat.checkpoint import STATISTICS, history_buffer_getattr

HISTORY_BUFFER_ERROR = 'Unsupported global: GLOBAL mmengine.logging.history_buffer.HistoryBuffer'
HB_MODULE = 'mmengine.logging.history_buffer'
# bounds a hung interpreter, not a slow one
HANG_TIMEOUT_S = 1800


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.linear(torch.stack(inputs))  # (N, 2) -> (N, 1)
        if mode == 'loss':
            return dict(loss=out.pow(2).mean())
        return list(out)


class NumpyScoreMetric(BaseMetric):
    """Returns a numpy scalar, as mmseg's IoUMetric does; ``save_best`` stores it."""
    default_prefix = 'toy'

    def process(self, data_batch, data_samples):
        self.results.extend(float(s) for s in data_samples)

    def compute_metrics(self, results):
        return dict(mIoU=np.float64(np.mean(results)))


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """A checkpoint written by mmengine's Runner: message hub, scheduler, best score."""
    work_dir = tmp_path_factory.mktemp('runner')
    dataset = [dict(inputs=torch.randn(2)) for _ in range(4)]
    loader = dict(dataset=dataset, sampler=dict(type='DefaultSampler', shuffle=False),
                  batch_size=2, collate_fn=dict(type='pseudo_collate'))
    runner = Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        train_dataloader=loader,
        val_dataloader=loader,
        val_evaluator=[NumpyScoreMetric()],
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1], by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=2, val_interval=2),
        val_cfg=dict(),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2,
                            save_best='auto')),
        experiment_name=f'ckpt_{os.getpid()}')
    runner.train()
    return work_dir / 'iter_2.pth'


def _run_python(code, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop(UNSAFE_LOAD_ENV, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


@pytest.fixture
def unchanged_process_state():
    """Asserts that a test leaves torch's allow-list and HistoryBuffer's class dict as found."""
    HistoryBuffer()  # as any HistoryBuffer does: the class dict gets mmengine's four defaults
    globals_before = set(torch.serialization.get_safe_globals())
    methods_before = dict(HistoryBuffer._statistics_methods)
    yield
    assert set(torch.serialization.get_safe_globals()) == globals_before
    assert HistoryBuffer._statistics_methods == methods_before


# --- crafted files -------------------------------------------------------------------------


class PickleWriter:
    """A protocol-2 pickle written opcode by opcode; values are kept in the memo."""

    def __init__(self):
        self.out = [pickle.PROTO + b'\x02']
        self.memo = 0

    def op(self, code: bytes):
        self.out.append(code)

    def glob(self, module, name):
        self.op(pickle.GLOBAL + f'{module}\n{name}\n'.encode())

    def string(self, text):
        data = text.encode()
        self.op(pickle.BINUNICODE + len(data).to_bytes(4, 'little') + data)

    def int(self, value):
        self.op(pickle.BININT + value.to_bytes(4, 'little', signed=True))

    def bytes(self, data):
        """``_codecs.encode(text, 'latin1')``: how protocol 2 writes bytes (torch's unpickler
        reads no bytes opcode)."""
        return self.call(lambda: self.glob('_codecs', 'encode'),
                         lambda: self.string(data.decode('latin1')),
                         lambda: self.string('latin1'))

    def tuple(self, *pushes):
        self.op(pickle.MARK)
        for push in pushes:
            push()
        self.op(pickle.TUPLE)

    def value(self, value):
        """Push a None, bool, int or str."""
        if value is None:
            self.op(pickle.NONE)
        elif type(value) is bool:
            self.op(pickle.NEWTRUE if value else pickle.NEWFALSE)
        elif type(value) is int:
            self.int(value)
        else:
            self.string(value)

    def keep(self) -> int:
        """Memoize the top of the stack; returns its memo index. (It stays on the stack:
        torch's unpickler has no POP, and STOP returns the top.)"""
        self.op(pickle.BINPUT + bytes([self.memo]))
        self.memo += 1
        return self.memo - 1

    def get(self, index):
        self.op(pickle.BINGET + bytes([index]))

    def call(self, func, *args):
        """``func(*args)`` (REDUCE); ``func`` and args are callables pushing one value each."""
        func()
        self.op(pickle.MARK)
        for push in args:
            push()
        self.op(pickle.TUPLE + pickle.REDUCE)
        return self.keep()

    def data(self, final=None) -> bytes:
        if final is None:
            self.op(pickle.NONE)
        else:
            self.get(final)
        return b''.join(self.out + [pickle.STOP])


def as_checkpoint(path, pickled: bytes):
    """A torch zip checkpoint whose ``data.pkl`` is ``pickled``."""
    buffer = io.BytesIO()
    torch.save({}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, \
            zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            dst.writestr(name, pickled if name.endswith('/data.pkl') else src.read(name))
    return path


def crafted_reduce(marker) -> bytes:
    """The classic: ``os.mkdir(marker)`` by REDUCE."""
    w = PickleWriter()
    result = w.call(lambda: w.glob('os', 'mkdir'), lambda: w.string(str(marker)))
    return w.data(result)


def crafted_getattr_init() -> bytes:
    """``getattr(HistoryBuffer, '__init__')``: a way out to ``__globals__`` by the allowed
    getattr."""
    w = PickleWriter()
    result = w.call(lambda: w.glob('builtins', 'getattr'), lambda: w.glob(HB_MODULE, 'HistoryBuffer'),
                    lambda: w.string('__init__'))
    return w.data(result)


def crafted_setstate_escape(marker) -> bytes:
    """The ``HistoryBuffer.__setstate__`` escape, ending in ``eval('os.mkdir(marker)')``.

    1. A HistoryBuffer whose state names dunder "statistics": mmengine's ``__setstate__`` adds
       them to the CLASS-level ``_statistics_methods``, which a getattr that takes its allowed
       names from that dict then returns for the rest of the process.
    2. ``getattr(HistoryBuffer, ...)`` then yields ``type``, ``object.__getattribute__`` and a
       builtin method (whose type is that of ``eval``).
    3. torch's allowed ``_rebuild_from_type_v2(func, new_type, args, state)`` calls ``func``:
       ``HistoryBuffer.mean.__builtins__['eval'](payload)``.
    """
    w = PickleWriter()
    w.glob(HB_MODULE, 'HistoryBuffer')
    hb = w.keep()
    w.get(hb)
    w.op(pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.EMPTY_DICT)
    w.string('statistics_methods')
    w.op(pickle.EMPTY_DICT + pickle.MARK)
    for name in ('__class__', '__getattribute__', '__subclasshook__'):
        w.string(name)
        w.op(pickle.NONE)
    w.op(pickle.SETITEMS + pickle.SETITEM + pickle.BUILD)

    def hb_attr(name):
        return w.call(lambda: w.glob('builtins', 'getattr'), lambda: w.get(hb),
                      lambda: w.string(name))

    type_, getattribute, builtin_method, mean = map(
        hb_attr, ('__class__', '__getattribute__', '__subclasshook__', 'mean'))

    def rebuild(func, new_type, *args):
        def push_args():
            w.op(pickle.MARK)
            for push in args:
                push()
            w.op(pickle.TUPLE)

        return w.call(lambda: w.glob('torch._tensor', '_rebuild_from_type_v2'),
                      lambda: w.get(func), lambda: w.get(new_type), push_args,
                      lambda: w.op(pickle.EMPTY_DICT))

    builtin_type = rebuild(type_, type_, lambda: w.get(builtin_method))
    dict_type = rebuild(getattribute, type_, lambda: w.op(pickle.EMPTY_DICT),
                        lambda: w.string('__class__'))
    builtins = rebuild(getattribute, dict_type, lambda: w.get(mean),
                       lambda: w.string('__builtins__'))
    getitem = rebuild(getattribute, builtin_type, lambda: w.get(builtins),
                      lambda: w.string('__getitem__'))
    eval_ = rebuild(getitem, builtin_type, lambda: w.string('eval'))
    result = rebuild(eval_, type_, lambda: w.string(f'__import__("os").mkdir({str(marker)!r})'))
    return w.data(result)


# What numpy writes for a uint8 dtype, and the same with the flags of an object dtype (which numpy
# accepts in ``dtype.__setstate__``: then an array of it reads its bytes as object pointers).
U1_STATE = np.dtype('u1').__reduce__()[2]
OBJECT_FLAGS_U1_STATE = U1_STATE[:-1] + (np.dtype(object).flags, )
MULTIARRAY = np.zeros(1).__reduce__()[0].__module__  # the spelling this numpy writes


def push_dtype(w, code, state=None):
    """``numpy.dtype(code, False, True)``, then BUILD with ``state`` (numpy's own if None)."""
    dtype = w.call(lambda: w.glob('numpy', 'dtype'), lambda: w.string(code),
                   lambda: w.value(False), lambda: w.value(True))
    state = np.dtype(code).__reduce__()[2] if state is None else state
    w.tuple(*(lambda v=v: w.value(v) for v in state))
    w.op(pickle.BUILD)
    return dtype


def push_array(w, shape, code, raw, dtype_state=None):
    """An array as numpy pickles it: ``_reconstruct(ndarray, (0,), b'b')``, BUILD
    ``(1, shape, dtype, False, raw)``."""
    array = w.call(lambda: w.glob(MULTIARRAY, '_reconstruct'), lambda: w.glob('numpy', 'ndarray'),
                   lambda: w.tuple(lambda: w.int(0)), lambda: w.bytes(b'b'))
    w.tuple(lambda: w.int(1), lambda: w.tuple(*(lambda n=n: w.int(n) for n in shape)),
            lambda: push_dtype(w, code, dtype_state), lambda: w.value(False),
            lambda: w.bytes(raw))
    w.op(pickle.BUILD)
    return array


def crafted_object_flags_dtype() -> bytes:
    """A uint8 dtype whose BUILD state marks it as holding Python objects."""
    w = PickleWriter()
    return w.data(push_dtype(w, 'u1', OBJECT_FLAGS_U1_STATE))


def crafted_object_flags_array() -> bytes:
    """The attack itself: an array of that dtype, its 8 bytes read as an object pointer."""
    w = PickleWriter()
    return w.data(push_array(w, (8, ), 'u1', bytes(8), OBJECT_FLAGS_U1_STATE))


# The dtype handling mmmod shipped before: numeric-only numpy.dtype, and numpy.ndarray and the
# concrete numeric dtype classes allow-listed (so that BUILD set a dtype's state).
PREVIOUS_DTYPE_ALLOW_LIST = '''
import numpy as np
import torch

def previous_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.kind not in 'biufc':
        raise RuntimeError(f'refused {dtype}')
    return dtype

dtype_classes = sorted({type(np.dtype(code)) for code in
                        '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']}, key=str)
previous = [(previous_dtype, 'numpy.dtype'), np.ndarray, *dtype_classes]
'''


def test_object_flags_dtype_built_under_previous_allow_list(tmp_path):
    """The crafted dtype is a real hole of the scheme this module replaced: it loads as a uint8
    dtype that holds objects. (Only the dtype: an array of it would corrupt the heap.)"""
    path = as_checkpoint(tmp_path / 'flags.pth', crafted_object_flags_dtype())
    proc = _run_python(PREVIOUS_DTYPE_ALLOW_LIST + f'''
with torch.serialization.safe_globals(previous):
    dtype = torch.load({str(path)!r}, weights_only=True)
print(type(dtype).__name__, dtype.str, dtype.hasobject)
''')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['UInt8DType', '|u1', 'True']


@pytest.mark.parametrize('crafted', [crafted_object_flags_dtype, crafted_object_flags_array])
@pytest.mark.parametrize('through', ['mmengine', 'torch.load'])
def test_object_flags_dtype_refused(crafted, through, tmp_path, unchanged_process_state):
    path = as_checkpoint(tmp_path / 'flags.pth', crafted())
    match = (rf'the state {re.escape(repr(OBJECT_FLAGS_U1_STATE))} of numpy\.dtype\(\'\|u1\'\) '
             rf'is refused \(numpy writes {re.escape(repr(U1_STATE))}\)')
    with pytest.raises(pickle.UnpicklingError, match=match):
        if through == 'mmengine':
            _load_checkpoint(str(path), map_location='cpu')
        else:
            with mmengine_checkpoint_loading():
                torch.load(path, weights_only=True)


def crafted_ndarray_call(opcode) -> bytes:
    """``numpy.ndarray((2,), 'O')`` by REDUCE, or ``numpy.ndarray.__new__`` by NEWOBJ."""
    w = PickleWriter()
    if opcode == 'reduce':
        return w.data(w.call(lambda: w.glob('numpy', 'ndarray'),
                             lambda: w.tuple(lambda: w.int(2)), lambda: w.string('O')))
    w.glob('numpy', 'ndarray')
    w.tuple(lambda: w.tuple(lambda: w.int(2)), lambda: w.string('O'))
    w.op(pickle.NEWOBJ)
    return w.data(w.keep())


@pytest.mark.parametrize('opcode, match', [('reduce', r"numpy\.ndarray\(\(2,\), 'O'\) is refused"),
                                           ('newobj', r'numpy\.ndarray\.__new__.* is refused')])
def test_ndarray_not_callable(opcode, match, unchanged_process_state):
    with pytest.raises(pickle.UnpicklingError, match=match):
        _load_bytes(_as_checkpoint_bytes(crafted_ndarray_call(opcode)))


def _as_checkpoint_bytes(pickled: bytes) -> bytes:
    buffer = io.BytesIO()
    as_checkpoint(buffer, pickled)
    return buffer.getvalue()


@pytest.mark.parametrize('raw', [b'\x01', b'\x01\x02\x03'])
def test_ndarray_data_must_match_shape(raw, unchanged_process_state):
    """numpy writes exactly prod(shape) * itemsize bytes."""
    w = PickleWriter()
    pickled = w.data(push_array(w, (2, ), 'u1', raw))
    with pytest.raises(pickle.UnpicklingError, match=rf'an ndarray of shape \(2,\) uint8 with '
                       rf'{len(raw)} bytes of data is refused \(needs 2\)'):
        _load_bytes(_as_checkpoint_bytes(pickled))


def test_crafted_arrays_as_numpy_writes_them_load(unchanged_process_state):
    """The writer above writes what numpy writes: the same file with numpy's states loads."""
    w = PickleWriter()
    array = _load_bytes(_as_checkpoint_bytes(w.data(push_array(w, (2, ), 'i2', b'\x01\x00' * 2))))
    assert type(array) is np.ndarray and array.dtype == np.int16 and array.tolist() == [1, 1]


@pytest.mark.parametrize('name', ['ArrayStandIn', 'DtypeStandIn', 'reconstruct', 'NDARRAY'])
def test_stand_ins_not_nameable_by_their_module_path(name, unchanged_process_state):
    """A file naming safe_numpy's objects themselves gets nothing: only numpy's names
    resolve to them (and the array stand-in answers to a name without a dot, which no GLOBAL
    spells)."""
    w = PickleWriter()
    w.glob('mmmod.compat.safe_numpy', name)
    with pytest.raises(pickle.UnpicklingError, match='Unsupported global'):
        _load_bytes(_as_checkpoint_bytes(w.data(w.keep())))


def test_array_without_state_refused(unchanged_process_state):
    w = PickleWriter()
    array = w.call(lambda: w.glob(MULTIARRAY, '_reconstruct'), lambda: w.glob('numpy', 'ndarray'),
                   lambda: w.tuple(lambda: w.int(0)), lambda: w.bytes(b'b'))
    with pytest.raises(pickle.UnpicklingError, match='an ndarray without its state is refused'):
        _load_bytes(_as_checkpoint_bytes(w.data(array)))


def test_allow_list_holds_no_numpy_object():
    """numpy's own classes would take a file's state (dtype classes) or build arrays unchecked
    (ndarray): none is allow-listed."""
    objects = [g[0] if isinstance(g, tuple) else g for g in SAFE_GLOBALS]
    assert not any(obj is np.ndarray or obj is np.dtype or
                   isinstance(obj, type) and issubclass(obj, (np.ndarray, np.dtype, np.generic))
                   for obj in objects)
    assert not any(getattr(obj, '__module__', '').startswith('numpy') for obj in objects)


def test_context_restores_torch_load(unchanged_process_state):
    original = torch.load, torch.serialization.load
    with mmengine_checkpoint_loading():
        assert torch.load is not original[0]
    assert (torch.load, torch.serialization.load) == original


# The allow-list mmmod shipped before: the real HistoryBuffer, and a getattr that reads its
# allowed names from HistoryBuffer's class-level dict.
PREVIOUS_ALLOW_LIST = '''
import torch
from mmengine.logging import HistoryBuffer

def previous_getattr(obj, name):
    if obj is HistoryBuffer and name in {'min', 'max', 'current', 'mean',
                                         *HistoryBuffer._statistics_methods}:
        return getattr(HistoryBuffer, name)
    raise RuntimeError(f'refused {name}')

previous = [HistoryBuffer, (previous_getattr, 'builtins.getattr')]
'''


def test_setstate_escape_ran_code_under_previous_allow_list(tmp_path):
    """The crafted file is a real exploit of the scheme this module replaced (so the tests
    below refuse something that did run code)."""
    marker = tmp_path / 'pwned'
    path = as_checkpoint(tmp_path / 'escape.pth', crafted_setstate_escape(marker))
    proc = _run_python(PREVIOUS_ALLOW_LIST + f'''
with torch.serialization.safe_globals(previous):
    try:
        torch.load({str(path)!r}, weights_only=True)
    except Exception as e:
        print(type(e).__name__)
''')
    assert proc.returncode == 0, proc.stderr
    assert marker.is_dir()


@pytest.mark.parametrize('kind', ['reduce', 'getattr', 'setstate'])
@pytest.mark.parametrize('through', ['mmengine', 'torch.load'])
def test_crafted_checkpoints_refused_without_trace(kind, through, tmp_path,
                                                   unchanged_process_state):
    marker = tmp_path / 'pwned'
    pickled = dict(reduce=lambda: crafted_reduce(marker), getattr=crafted_getattr_init,
                   setstate=lambda: crafted_setstate_escape(marker))[kind]()
    path = as_checkpoint(tmp_path / f'{kind}.pth', pickled)
    with pytest.raises(pickle.UnpicklingError):
        if through == 'mmengine':
            _load_checkpoint(str(path), map_location='cpu')
        else:
            torch.load(path, weights_only=True)
    assert not marker.exists()


def test_setstate_escape_refused_at_the_history_buffer(tmp_path, unchanged_process_state):
    """The stand-in refuses the poisoned state itself, before any getattr is tried."""
    path = as_checkpoint(tmp_path / 'escape.pth', crafted_setstate_escape(tmp_path / 'pwned'))
    with pytest.raises(pickle.UnpicklingError, match=r'a HistoryBuffer state with keys \['):
        _load_checkpoint(str(path), map_location='cpu')


def _load_bytes(data: bytes):
    with mmengine_checkpoint_loading():
        return torch.load(io.BytesIO(data), weights_only=True)


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_history_buffer_rebuilt_and_validated(unchanged_process_state):
    buffer = _load_bytes(_saved(dict(loss=HistoryBuffer([1.0, 3.0], [1, 1], max_length=5))))
    loss = buffer['loss']
    assert type(loss) is HistoryBuffer
    assert loss.max_length == 5 and float(loss.mean()) == 2.0
    assert float(loss.statistics('max')) == 3.0
    assert 'statistics_methods' not in vars(loss)


@pytest.mark.parametrize('state, match', [
    (dict(max_length=5, _log_history=np.array(['a'], dtype=object),
          _count_history=np.array([1])), 'numpy dtype'),
    (dict(max_length=5, _log_history=np.array(['a']), _count_history=np.array([1])),
     'numpy dtype'),
    (dict(max_length=5, _log_history=np.zeros((2, 2)), _count_history=np.zeros(2)),
     '1-d numeric ndarray'),
    (dict(max_length=5, _log_history=np.zeros(2), _count_history=np.zeros(3)), 'equal lengths'),
    (dict(max_length=0, _log_history=np.zeros(2), _count_history=np.zeros(2)), 'an int >= 1'),
    (dict(max_length=5, _log_history=np.zeros(2)), 'a HistoryBuffer state with keys'),
    (dict(max_length=5, _log_history=np.zeros(2), _count_history=np.zeros(2), extra=1),
     'a HistoryBuffer state with keys'),
])
def test_history_buffer_bad_state_refused(state, match, unchanged_process_state):
    holder = HistoryBuffer()
    vars(holder).clear()
    vars(holder).update(state)
    with pytest.raises(pickle.UnpicklingError, match=match):
        _load_bytes(_saved(dict(loss=holder)))


@pytest.mark.parametrize('methods', [
    {'mean': HistoryBuffer.max},  # a known name bound to another function
    {'median': HistoryBuffer.mean},  # a name outside mmengine's four
])
def test_history_buffer_statistics_from_fixed_set(methods, monkeypatch,
                                                  unchanged_process_state):
    """Statistics methods must be mmengine's four, each as itself."""
    with monkeypatch.context() as m:  # __getstate__ writes the class-level dict
        m.setattr(HistoryBuffer, '_statistics_methods', methods)
        data = _saved(dict(loss=HistoryBuffer([1.0], [1])))
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer statistics'):
        _load_bytes(data)


def test_getattr_from_fixed_set_never_private():
    assert all(not name.startswith('_') for name in STATISTICS)
    assert history_buffer_getattr(HistoryBuffer, 'mean') is vars(HistoryBuffer)['mean']
    for obj, name in ((HistoryBuffer, '__init__'), (HistoryBuffer, '__class__'),
                      (np.ndarray, 'tofile')):
        with pytest.raises(pickle.UnpicklingError, match='allowed: HistoryBuffer.current'):
            history_buffer_getattr(obj, name)


def test_registered_statistics_do_not_extend_getattr(monkeypatch):
    """Even names registered in the process (HistoryBuffer.register_statistics) stay out."""
    monkeypatch.setitem(HistoryBuffer._statistics_methods, 'median', HistoryBuffer.mean)
    with pytest.raises(pickle.UnpicklingError):
        history_buffer_getattr(HistoryBuffer, 'median')


@pytest.mark.parametrize('value', [np.array([1, 'x'], dtype=object), np.array(['x']),
                                   np.array([(1, 2.0)], dtype='i4,f8')])
def test_non_numeric_arrays_refused(value, unchanged_process_state):
    with pytest.raises(pickle.UnpicklingError):
        _load_bytes(_saved(dict(value=value)))


def test_numeric_numpy_values_load(unchanged_process_state):
    out = _load_bytes(_saved(dict(a=np.arange(3, dtype=np.int16), b=np.float64(0.5),
                                  c=np.array([True, False]))))
    np.testing.assert_array_equal(out['a'], [0, 1, 2])
    assert out['b'] == 0.5 and out['a'].dtype == np.int16 and out['c'].dtype == bool


# --- real checkpoints ----------------------------------------------------------------------


def test_allow_list_covers_what_runner_writes(runner_checkpoint):
    """The globals beyond torch's defaults, found in a Runner checkpoint, are allow-listed.

    (A dtype's and an array's state are set on safe_numpy's stand-ins, which
    test_mmengine_loader_reads_runner_checkpoint covers.)
    """
    needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(runner_checkpoint)))
    multiarray = np.zeros(1).__reduce__()[0].__module__  # the spelling this numpy writes
    assert needed == {
        'mmengine.logging.history_buffer.HistoryBuffer',
        'builtins.getattr',  # HistoryBuffer.__getstate__ stores its statistics methods
        'numpy.ndarray',
        'numpy.dtype',
        f'{multiarray}._reconstruct',
        f'{multiarray}.scalar',  # the best score, an np.float64
    }
    names = {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
             for g in SAFE_GLOBALS}
    assert needed <= names


def test_mmengine_loader_reads_runner_checkpoint(runner_checkpoint, unchanged_process_state):
    """The call Runner.resume and load_from make."""
    ckpt = _load_checkpoint(str(runner_checkpoint), map_location='cpu')
    assert set(ckpt) >= {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'}
    assert ckpt['meta']['iter'] == 2
    loss = ckpt['message_hub']['log_scalars']['train/loss']
    assert type(loss) is HistoryBuffer and len(loss.data[0]) == 2
    assert isinstance(ckpt['message_hub']['runtime_info']['best_score'], np.float64)


def test_runner_resumes_from_checkpoint(runner_checkpoint, tmp_path):
    dataset = [dict(inputs=torch.randn(2)) for _ in range(4)]
    loader = dict(dataset=dataset, sampler=dict(type='DefaultSampler', shuffle=False),
                  batch_size=2, collate_fn=dict(type='pseudo_collate'))
    runner = Runner(
        model=ToyModel(), work_dir=str(tmp_path), train_dataloader=loader,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=4), resume=True,
        load_from=str(runner_checkpoint), experiment_name=f'resume_{os.getpid()}')
    runner.train()
    assert runner.iter == 4


def test_plain_torch_load_sees_no_allow_list(runner_checkpoint):
    """After ``import mmmod``: torch.load refuses as without it, mmengine's loader reads, and
    torch's allow-list holds nothing of mmmod's before, during or after (torch lists some
    types of its own there)."""
    proc = _run_python(f'''
        import torch, mmmod
        from mmengine.runner.checkpoint import _load_checkpoint
        from mmmod.compat import SAFE_GLOBALS

        def mmmod_entries():
            ours = {{id(g[0] if isinstance(g, tuple) else g) for g in SAFE_GLOBALS}}
            return [g for g in torch.serialization.get_safe_globals()
                    if id(g[0] if isinstance(g, tuple) else g) in ours]

        assert mmmod_entries() == [], 'allow-list set on import'
        try:
            torch.load({str(runner_checkpoint)!r}, map_location='cpu')
        except Exception as e:
            print('torch.load:', type(e).__name__, e)
        ckpt = _load_checkpoint({str(runner_checkpoint)!r}, map_location='cpu')
        print('mmengine:', sorted(ckpt))
        assert mmmod_entries() == [], 'allow-list left after loading'
    ''')
    assert proc.returncode == 0, proc.stderr
    assert 'torch.load: UnpicklingError' in proc.stdout
    assert HISTORY_BUFFER_ERROR in proc.stdout
    assert "mmengine: ['message_hub', 'meta'" in proc.stdout


def test_unsafe_switch_loads_in_fresh_interpreter(runner_checkpoint):
    proc = _run_python(f'''
        import torch
        print(sorted(torch.load({str(runner_checkpoint)!r}, map_location='cpu')))
    ''', env_extra={UNSAFE_LOAD_ENV: '1'})
    assert proc.returncode == 0, proc.stderr


def test_allow_unsafe_sets_torch_switch(monkeypatch):
    monkeypatch.setenv(UNSAFE_LOAD_ENV, '0')  # and monkeypatch restores the outer value
    allow_unsafe_checkpoint_loading()
    assert os.environ[UNSAFE_LOAD_ENV] == '1'


def test_context_nests_and_keeps_user_entries(unchanged_process_state):
    class UserType:
        pass

    with torch.serialization.safe_globals([UserType, np.ndarray]):
        before = set(torch.serialization.get_safe_globals())
        with mmengine_checkpoint_loading():
            with mmengine_checkpoint_loading():
                assert len(torch.serialization.get_safe_globals()) == \
                    len(before) + len(SAFE_GLOBALS) - 1  # np.ndarray was there
            assert len(torch.serialization.get_safe_globals()) > len(before)
        assert set(torch.serialization.get_safe_globals()) == before


def test_every_mmengine_scheme_wrapped_once():
    loaders = dict(CheckpointLoader._schemes)
    assert all(getattr(fn, 'mmmod_safe_loader', False) for fn in loaders.values())
    install_checkpoint_loaders()
    assert dict(CheckpointLoader._schemes) == loaders


def test_other_numpy_spelling_loads():
    """Checkpoints name ``numpy.core.multiarray`` (numpy 1) or ``numpy._core.multiarray``
    (numpy 2), whichever wrote them; both load under either numpy."""
    buffer = io.BytesIO()
    # the legacy (non-zip) format is a plain pickle stream: the module name can be rewritten
    torch.save(dict(hist=HistoryBuffer([1.0, 2.0], [1, 1])), buffer,
               _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    spellings = (b'numpy._core.multiarray', b'numpy.core.multiarray')
    written = next(s for s in spellings if s in data)
    other = spellings[1 - spellings.index(written)]
    hist = _load_bytes(data.replace(written, other))['hist']
    np.testing.assert_array_equal(hist.data[0], [1.0, 2.0])


def test_message_hub_round_trips(tmp_path, unchanged_process_state):
    """A real mmengine checkpoint with a MessageHub state: HistoryBuffers of float64 and int
    arrays, numpy scalars and arrays in the runtime info come back equal, of the same dtypes."""
    hub = MessageHub.get_instance(f'round_trip_{os.getpid()}')
    hub.update_scalar('train/loss', 0.5)
    hub.update_scalar('train/loss', 0.25, count=2)
    # update_scalar appends to float64 arrays: an int buffer as a custom logger keeps one
    hub.log_scalars['train/int'] = HistoryBuffer(np.array([3, 4], np.int64),
                                                 np.array([1, 2], np.int32))
    hub._resumed_keys['train/int'] = True
    info = dict(best_score=np.float64(0.75), epoch=np.int32(7), flag=np.bool_(True),
                weights=np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
                big_endian=np.arange(3, dtype='>i4'), zero_d=np.array(1.5, np.float16),
                pairs=[(np.int8(1), np.uint16(2))])
    for key, value in info.items():
        hub.update_info(key, value)
    path = tmp_path / 'hub.pth'
    save_checkpoint(dict(meta=dict(iter=2), message_hub=hub.state_dict()), str(path))

    ckpt = _load_checkpoint(str(path), map_location='cpu')
    scalars = ckpt['message_hub']['log_scalars']
    for key in ('train/loss', 'train/int'):
        saved, loaded = hub.get_scalar(key), scalars[key]
        assert type(loaded) is HistoryBuffer and loaded.max_length == saved.max_length
        for before, after in zip(saved.data, loaded.data):
            assert type(after) is np.ndarray and after.dtype == before.dtype
            np.testing.assert_array_equal(after, before)
    assert scalars['train/int'].data[0].dtype == np.int64
    assert float(scalars['train/loss'].mean()) == float(hub.get_scalar('train/loss').mean())
    runtime_info = ckpt['message_hub']['runtime_info']
    for key, value in info.items():
        assert type(runtime_info[key]) is type(value), key
        np.testing.assert_array_equal(runtime_info[key], value)
    weights = runtime_info['weights']
    assert weights.dtype == np.float32 and weights.flags.f_contiguous and weights.flags.writeable
    assert runtime_info['big_endian'].dtype == np.dtype('>i4')
    assert [tuple(map(type, pair)) for pair in runtime_info['pairs']] == [(np.int8, np.uint16)]

    restored = MessageHub.get_instance(f'restored_{os.getpid()}')
    restored.load_state_dict(ckpt['message_hub'])
    assert float(restored.get_scalar('train/loss').current()) == 0.25
    assert restored.get_info('best_score') == 0.75


# --- checksums -----------------------------------------------------------------------------


def test_hashed_name_verified(runner_checkpoint, tmp_path):
    """A name as publish_model.py writes it, ``<stem>-<sha256[:8]>.pth``, is checked."""
    data = bytearray(runner_checkpoint.read_bytes())
    published = tmp_path / f'toy-{hashlib.sha256(data).hexdigest()[:8]}.pth'
    published.write_bytes(data)
    assert verify_checksum(str(published))
    assert 'state_dict' in _load_checkpoint(str(published), map_location='cpu')

    data[len(data) // 2] ^= 0xFF  # one changed byte in the middle of the file
    published.write_bytes(data)
    with pytest.raises(ChecksumError, match='is damaged or was changed'):
        _load_checkpoint(str(published), map_location='cpu')


def test_unhashed_name_not_verified(runner_checkpoint):
    assert verify_checksum(str(runner_checkpoint)) is False
