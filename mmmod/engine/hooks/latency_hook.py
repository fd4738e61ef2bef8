"""Inference latency of the model under test, measured on real test inputs, written into the
test metrics.

Timing follows the CNN-MoD paper (Sec. 4: ``torch.utils.benchmark.Timer``, batch 1): after the
test loop has evaluated the model, the hook takes the first ``batch_size`` samples of the first
test batch, runs them through the model's data preprocessor and times
``model(inputs, data_samples, mode=mode)`` on a deep copy of the model on each requested
device. The model under test, its predictions and the random state are never touched, so the
accuracy metrics are the same with and without the hook.

Where the numbers go: ``TestLoop`` calls ``after_test_epoch(runner, metrics)`` on every hook
with the *same* dict, in priority order. ``RuntimeInfoHook`` (``VERY_HIGH``) copies that dict
into the message hub, from which ``LoggerHook`` (``BELOW_NORMAL``) writes the log line and the
``WORK_DIR/TIMESTAMP/TIMESTAMP.json`` that ``tools/test.py`` produces, and ``Runner.test()``
returns it. This hook therefore runs at ``HIGHEST`` priority and adds its keys to the dict
before ``RuntimeInfoHook`` reads it (verified in tests/test_engine/test_latency_hook.py).
"""
import copy
import platform
from typing import Dict, Optional, Sequence

import torch
from mmengine.dist import broadcast_object_list, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch.utils import benchmark

from mmmod.registry import HOOKS

MODES = ('predict', 'tensor')
METRIC_PREFIX = 'latency'


def _check_device(device: str) -> str:
    """'cpu', 'cuda' or 'cuda:N'; anything else raises."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"LatencyHook: devices must be 'cpu', 'cuda' or 'cuda:N', "
                         f'got {device!r}') from e
    if parsed.type not in ('cpu', 'cuda'):
        raise ValueError(f"LatencyHook: devices must be 'cpu', 'cuda' or 'cuda:N', "
                         f'got {device!r}')
    return str(parsed)


def _quartiles(values: Sequence[float]):
    """(25th, 50th, 75th percentile) of ``values``."""
    t = torch.tensor(list(values), dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return tuple(float(v) for v in q)


def _take(batch_part, n: int):
    """The first ``n`` samples of a collated batch part (a tensor or a list)."""
    if isinstance(batch_part, (torch.Tensor, list, tuple)):
        return batch_part[:n]
    if isinstance(batch_part, dict):  # e.g. multi-modal inputs
        return {key: _take(value, n) for key, value in batch_part.items()}
    return batch_part


def _num_samples(data_batch: dict) -> int:
    inputs = data_batch['inputs']
    if isinstance(inputs, dict):
        inputs = next(iter(inputs.values()))
    return len(inputs)


@HOOKS.register_module()
class LatencyHook(Hook):
    """Time the model's inference during test (and optionally validation) and add the median
    and inter-quartile range per image to the metrics.

    Metrics written, per device ``D`` (``cpu``, ``cuda``; ``cuda:1`` becomes ``cuda1``):

    - ``latency/D_ms``: median milliseconds per image over ``repeats`` measurements,
    - ``latency/D_ms_iqr``: their inter-quartile range (75th - 25th percentile), in ms,
    - ``latency/threads``: the intra-op threads ``torch.utils.benchmark.Timer`` ran with,
    - ``latency/batch_size``: images per timed call.

    A measurement is ``number`` calls timed together, divided by ``number * batch_size``.

    What is timed (``mode``):

    - ``'predict'`` (default) -- the honest end-to-end inference of every OpenMMLab model:
      backbone, neck, head and post-processing (softmax for mmpretrain, resize of the logits to
      the image for mmseg, box decoding and NMS for mmdet), on preprocessed inputs.
    - ``'tensor'`` -- the network's raw forward (no post-processing); for mmdet two-stage
      detectors this still runs the RPN proposals.

    The data preprocessor (normalisation, padding, moving to the device) runs once per device,
    outside the timed statement, as in the paper's ``Timer`` measurements on tensors.

    In distributed runs only rank 0 times (the other ranks wait) and the result is broadcast,
    so every rank's metrics, and the json each writes, carry the same numbers.

    Args:
        devices (Sequence[str]): where to time, any of ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
            A CUDA device on a machine without CUDA is skipped with a warning (its keys are
            absent, which tables show as a gap). Default ``('cpu',)``.
        batch_size (int): images per timed call, taken from the first test batch (fewer if
            that batch is smaller; the metric says how many). Default 1 (the paper).
        warmup (int): untimed calls before measuring. Default 10.
        repeats (int): measurements the median and IQR are taken over. Default 30.
        number (int): calls per measurement. Default 1.
        num_threads (int, optional): intra-op threads for the timed calls; None takes
            ``torch.get_num_threads()`` of the test process. Always recorded.
        mode (str): ``'predict'`` or ``'tensor'``, see above.
        on_val (bool): also time after every validation epoch (e.g. during training).
            Default False.

    Example:
        >>> # in any mmpretrain / mmseg / mmdet config
        >>> custom_hooks = [dict(type='LatencyHook', devices=('cpu', 'cuda'), num_threads=1)]
    """
    # Before RuntimeInfoHook (VERY_HIGH) copies the metrics to the message hub for LoggerHook.
    priority = 'HIGHEST'

    def __init__(self,
                 devices: Sequence[str] = ('cpu', ),
                 batch_size: int = 1,
                 warmup: int = 10,
                 repeats: int = 30,
                 number: int = 1,
                 num_threads: Optional[int] = None,
                 mode: str = 'predict',
                 on_val: bool = False):
        if isinstance(devices, str):
            devices = (devices, )
        if not devices:
            raise ValueError('LatencyHook: devices must name at least one device')
        self.devices = tuple(_check_device(d) for d in devices)
        for name, value, low in (('batch_size', batch_size, 1), ('warmup', warmup, 0),
                                 ('repeats', repeats, 1), ('number', number, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f'LatencyHook: {name} must be an int >= {low}, got {value!r}')
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f'LatencyHook: num_threads must be None or an int >= 1, '
                             f'got {num_threads!r}')
        if mode not in MODES:
            raise ValueError(f'LatencyHook: mode must be one of {list(MODES)}, got {mode!r}')
        self.batch_size = batch_size
        self.warmup = warmup
        self.repeats = repeats
        self.number = number
        self.num_threads = num_threads
        self.mode = mode
        self.on_val = on_val
        self._batch: Optional[dict] = None

    # -- capture the first samples -------------------------------------------------------------
    def _capture(self, batch_idx: int, data_batch) -> None:
        if batch_idx == 0 and isinstance(data_batch, dict) and 'inputs' in data_batch:
            n = min(self.batch_size, _num_samples(data_batch))
            self._batch = copy.deepcopy({key: _take(value, n) for key, value in
                                         data_batch.items()})

    def before_test_epoch(self, runner) -> None:
        self._batch = None

    def before_test_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._capture(batch_idx, data_batch)

    def before_val_epoch(self, runner) -> None:
        self._batch = None

    def before_val_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.on_val:
            self._capture(batch_idx, data_batch)

    # -- time and report -----------------------------------------------------------------------
    def after_test_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        self._report(runner, metrics)

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        if self.on_val:
            self._report(runner, metrics)

    def _report(self, runner, metrics: Optional[Dict[str, float]]) -> None:
        rank, world_size = get_dist_info()
        results = [None]
        if rank == 0:
            if self._batch is None:
                print_log('LatencyHook: no test batch seen, nothing timed.', 'current',
                          level=30)
            else:
                results[0] = self.measure(runner.model, self._batch)
        if world_size > 1:
            broadcast_object_list(results, src=0)
        self._batch = None
        if results[0] is None:
            return
        latency = results[0]
        if metrics is not None:
            metrics.update(latency)
        where = f'rank 0 of {world_size} processes' if world_size > 1 else 'this process'
        summary = ', '.join(f'{key}={value:.3f}' if isinstance(value, float) else
                            f'{key}={value}' for key, value in latency.items())
        print_log(f'LatencyHook ({where}, mode={self.mode!r}, {platform.processor() or "cpu"}):'
                  f' {summary}', 'current')

    def measure(self, model: torch.nn.Module, data_batch: dict) -> Dict[str, float]:
        """Latency metrics of ``model`` (unchanged) on ``data_batch`` (a collated batch)."""
        if is_model_wrapper(model):
            model = model.module
        num_threads = self.num_threads or torch.get_num_threads()
        n = _num_samples(data_batch)
        # floats: LoggerHook's json writer drops the numpy ints the message hub turns ints into
        out: Dict[str, float] = {
            f'{METRIC_PREFIX}/threads': float(num_threads),
            f'{METRIC_PREFIX}/batch_size': float(n)
        }
        for device in self.devices:
            if device.startswith('cuda') and not torch.cuda.is_available():
                print_log(f'LatencyHook: {device!r} requested but CUDA is not available; '
                          'skipped.', 'current', level=30)
                continue
            times = self._time_on(model, data_batch, device, num_threads)
            if device.startswith('cuda'):
                torch.cuda.empty_cache()  # the replica is gone: hand its memory back
            q1, median, q3 = _quartiles([t * 1e3 / n for t in times])  # s/call -> ms/image
            key = device.replace(':', '')
            out[f'{METRIC_PREFIX}/{key}_ms'] = median
            out[f'{METRIC_PREFIX}/{key}_ms_iqr'] = q3 - q1
        return out

    def _time_on(self, model, data_batch, device, num_threads):
        """Seconds per call, one value per measurement."""
        fork_devices = ([torch.device(device).index or 0] if device.startswith('cuda')
                        else [])
        # The timed copy must not move the model under test, nor consume its random stream
        # (random channel selection, dropout in a training-time validation).
        with torch.random.fork_rng(devices=fork_devices):
            replica = copy.deepcopy(model).to(device).eval()
            with torch.no_grad():
                data = replica.data_preprocessor(copy.deepcopy(data_batch), False)
                inputs, data_samples = data['inputs'], data.get('data_samples')

                def call():
                    return replica(inputs, data_samples, mode=self.mode)

                timer = benchmark.Timer(
                    stmt='call()', globals=dict(call=call), num_threads=num_threads,
                    label='LatencyHook', description=device)
                if self.warmup:
                    timer.timeit(self.warmup)
                times = [timer.timeit(self.number).mean for _ in range(self.repeats)]
        return times
