"""mmengine's own checkpoints load under ``weights_only=True``; nothing else does."""
import io
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint
from torch import nn

from mmmod.compat import (UNSAFE_LOAD_ENV, allow_mmengine_checkpoints,
                          allow_unsafe_checkpoint_loading, mmengine_safe_globals)
from mmmod.compat.checkpoint import history_buffer_getattr

HISTORY_BUFFER_ERROR = 'Unsupported global: GLOBAL mmengine.logging.history_buffer.HistoryBuffer'


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


def _load_in_fresh_interpreter(path, prelude='', env_extra=None):
    code = textwrap.dedent(f'''
        {prelude}
        import torch
        ckpt = torch.load({str(path)!r}, map_location='cpu')
        print('loaded', sorted(ckpt))
    ''')
    env = dict(os.environ, OMP_NUM_THREADS='1', **(env_extra or {}))
    if not env_extra:
        env.pop(UNSAFE_LOAD_ENV, None)
    return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def without_allow_list():
    """torch's allow-list emptied for the test, restored afterwards."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


def _name(safe_global):
    if isinstance(safe_global, tuple):
        return safe_global[1]
    return f'{safe_global.__module__}.{safe_global.__qualname__}'


def test_allow_list_covers_what_runner_writes(runner_checkpoint, without_allow_list):
    """The globals beyond torch's defaults, found in a Runner checkpoint, are allow-listed.

    (The concrete dtype classes are no globals in the pickle; the unpickler checks them when
    it sets a dtype's state, which test_runner_checkpoint_loads_weights_only covers.)
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
    assert needed <= {_name(g) for g in mmengine_safe_globals()}


def test_runner_checkpoint_loads_weights_only(runner_checkpoint):
    ckpt = torch.load(runner_checkpoint, map_location='cpu', weights_only=True)
    assert ckpt['meta']['iter'] == 2
    loss = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer) and len(loss.data[0]) == 2
    best = ckpt['message_hub']['runtime_info']['best_score']
    assert isinstance(best, np.float64)


def test_mmengine_loader_reads_runner_checkpoint(runner_checkpoint):
    """The call Runner.resume and load_from make: torch.load without weights_only."""
    ckpt = _load_checkpoint(str(runner_checkpoint), map_location='cpu')
    assert set(ckpt) >= {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'}


def test_fresh_interpreter_fails_without_allow_list(runner_checkpoint):
    proc = _load_in_fresh_interpreter(runner_checkpoint)
    assert proc.returncode != 0
    assert 'UnpicklingError' in proc.stderr
    assert HISTORY_BUFFER_ERROR in proc.stderr


def test_fresh_interpreter_loads_after_import_mmmod(runner_checkpoint):
    proc = _load_in_fresh_interpreter(runner_checkpoint, prelude='import mmmod')
    assert proc.returncode == 0, proc.stderr
    assert "'message_hub'" in proc.stdout


def test_unsafe_switch_loads_without_allow_list(runner_checkpoint):
    proc = _load_in_fresh_interpreter(runner_checkpoint, env_extra={UNSAFE_LOAD_ENV: '1'})
    assert proc.returncode == 0, proc.stderr


class NotAllowed:
    pass


def test_getattr_limited_to_history_buffer_statistics():
    assert history_buffer_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    with pytest.raises(pickle.UnpicklingError, match='only for HistoryBuffer'):
        history_buffer_getattr(HistoryBuffer, '__init__')
    with pytest.raises(pickle.UnpicklingError, match='only for HistoryBuffer'):
        history_buffer_getattr(np.ndarray, 'tofile')


def test_pickle_walking_to_builtins_refused():
    """The classic escape through getattr -- reach ``eval`` from an allowed class and call
    it via torch's allowed ``_rebuild_from_type_v2`` -- stops at the first getattr."""

    class Escape:

        def __reduce__(self):
            return getattr, (HistoryBuffer.__init__, '__globals__')

    buffer = io.BytesIO()
    torch.save(dict(x=Escape()), buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError, match='only for HistoryBuffer'):
        torch.load(buffer)


def test_other_objects_stay_refused():
    buffer = io.BytesIO()
    torch.save(dict(obj=NotAllowed()), buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError, match='Unsupported global'):
        torch.load(buffer)


def test_explicit_weights_only_false_untouched(monkeypatch):
    """The allow-list adds names; an explicit weights_only=False still loads anything."""
    buffer = io.BytesIO()
    torch.save(dict(obj=NotAllowed()), buffer)
    buffer.seek(0)
    assert isinstance(torch.load(buffer, weights_only=False)['obj'], NotAllowed)


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
    hist = torch.load(io.BytesIO(data.replace(written, other)), weights_only=True)['hist']
    np.testing.assert_array_equal(hist.data[0], [1.0, 2.0])


def test_allow_list_idempotent():
    before = set(map(repr, torch.serialization.get_safe_globals()))
    allow_mmengine_checkpoints()
    allow_mmengine_checkpoints()
    assert set(map(repr, torch.serialization.get_safe_globals())) == before


def test_allow_list_excludes_object_and_string_dtypes():
    classes = {g for g in mmengine_safe_globals() if isinstance(g, type)}
    assert type(np.dtype(object)) not in classes
    assert type(np.dtype(str)) not in classes
    assert type(np.dtype(np.float64)) in classes


def test_allow_unsafe_sets_torch_switch(monkeypatch):
    monkeypatch.setenv(UNSAFE_LOAD_ENV, '0')  # and monkeypatch restores the outer value
    allow_unsafe_checkpoint_loading()
    assert os.environ[UNSAFE_LOAD_ENV] == '1'
