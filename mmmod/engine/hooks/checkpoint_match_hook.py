"""Refuse a checkpoint whose weights do not fit the model, before any of them is loaded.

mmengine's ``Runner.load_checkpoint`` (``load_from``, ``tools/test.py CONFIG CKPT``) loads with
``strict=False``: a checkpoint of another architecture prints size-mismatch and missing-key
warnings, the matching tensors load, the rest keep their initial values, and the test ends with
exit code 0 and a meaningless score (top-1 = 0). Its ``strict=True`` would raise, but with every
key of the model in one line, after loading what fits.

mmengine calls ``after_load_checkpoint(runner, checkpoint)`` on every hook between reading the
file (``_load_checkpoint``, mmengine's own loader) and loading it into the model
(``_load_checkpoint_to_model``). This hook compares there, without loading anything, what that
step would report: it takes ``checkpoint['state_dict']`` (or the checkpoint itself, if it has no
such key), applies the Runner's ``revise_keys`` (strip ``module.``), unwraps the model as
mmengine's ``load_state_dict`` does (DDP and other model wrappers, the TTA model) and compares
keys and shapes with the model's ``state_dict``. Missing BN ``num_batches_tracked`` counters are
ignored, as mmengine does. ``LOWEST`` priority: other hooks (EMA, key converters) see the
checkpoint first.

``tools/test.py`` adds this hook unless ``--non-strict`` is given.
"""
import re
from typing import List, Sequence, Tuple

from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner.checkpoint import get_state_dict

from mmmod.registry import HOOKS

__all__ = ['CheckpointMatchHook', 'CheckpointMismatchError', 'checkpoint_mismatches']

# Runner.load_checkpoint's default revise_keys (what load_or_resume uses for load_from).
RUNNER_REVISE_KEYS = ((r'^module.', ''), )
# Keys of each kind the message lists; the counts are always complete.
FIRST_KEYS = 10
# Buffers mmengine's load_state_dict does not count as missing (old BN checkpoints lack them).
IGNORED_MISSING = 'num_batches_tracked'


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's weights do not fit the model it was given to."""


def _shape(value) -> Tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, 'shape') else ()


def _unwrapped(model):
    # mmengine's load_state_dict loads into .module of a model wrapper or a TTA model
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def checkpoint_mismatches(model, checkpoint: dict,
                          revise_keys: Sequence[Tuple[str, str]] = RUNNER_REVISE_KEYS):
    """What loading ``checkpoint`` into ``model`` through mmengine would not match.

    Args:
        model (torch.nn.Module): The model (may be wrapped by DDP or a TTA model).
        checkpoint (dict): As read by ``mmengine.runner.checkpoint._load_checkpoint``.
        revise_keys (Sequence[tuple[str, str]]): ``(pattern, replacement)`` applied to the
            checkpoint's keys, as ``Runner.load_checkpoint`` does.

    Returns:
        tuple[list, list, list]: ``shape`` -- ``(key, checkpoint shape, model shape)`` of the
        tensors both have with different shapes, ``missing`` -- ``(key, model shape)`` the model
        has and the checkpoint lacks, ``unexpected`` -- ``(key, checkpoint shape)`` the other
        way round; each in the model's (or the checkpoint's) key order.

    Example:
        >>> import torch
        >>> ckpt = dict(state_dict={'module.weight': torch.zeros(2, 3), 'extra': torch.zeros(1)})
        >>> checkpoint_mismatches(torch.nn.Linear(3, 4), ckpt)
        ([('weight', (2, 3), (4, 3))], [('bias', (4,))], [('extra', (1,))])
    """
    state_dict = checkpoint.get('state_dict', checkpoint)
    revised = {}
    for key, value in state_dict.items():
        for pattern, replacement in revise_keys:
            key = re.sub(pattern, replacement, key)
        revised[key] = value
    own = get_state_dict(_unwrapped(model))
    shape = [(key, _shape(revised[key]), _shape(value)) for key, value in own.items()
             if key in revised and _shape(revised[key]) != _shape(value)]
    missing = [(key, _shape(value)) for key, value in own.items()
               if key not in revised and IGNORED_MISSING not in key]
    unexpected = [(key, _shape(value)) for key, value in revised.items() if key not in own]
    return shape, missing, unexpected


def _listing(title: str, rows: List[str]) -> List[str]:
    if not rows:
        return []
    more = f' (first {FIRST_KEYS})' if len(rows) > FIRST_KEYS else ''
    return [f'  {len(rows)} {title}{more}:'] + [f'    {row}' for row in rows[:FIRST_KEYS]]


@HOOKS.register_module()
class CheckpointMatchHook(Hook):
    """Raise :class:`CheckpointMismatchError` when a loaded checkpoint does not fit the model:
    tensors of another shape, keys the model needs that the checkpoint lacks, or keys the model
    does not have. The message lists the first :data:`FIRST_KEYS` of each kind.

    Args:
        revise_keys (Sequence[tuple[str, str]]): Applied to the checkpoint's keys before the
            comparison; keep it equal to what the Runner loads with (its default strips a
            ``module.`` prefix).

    Example:
        >>> # what tools/test.py adds unless --non-strict
        >>> custom_hooks = [dict(type='CheckpointMatchHook')]
    """
    priority = 'LOWEST'  # after hooks that convert or swap the checkpoint (EMAHook)

    def __init__(self, revise_keys: Sequence[Tuple[str, str]] = RUNNER_REVISE_KEYS):
        self.revise_keys = tuple(tuple(pair) for pair in revise_keys)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        shape, missing, unexpected = checkpoint_mismatches(runner.model, checkpoint,
                                                           self.revise_keys)
        if not (shape or missing or unexpected):
            return
        model = _unwrapped(runner.model)
        backbone = getattr(model, 'backbone', None)
        arch = type(model).__name__ + (f' with {type(backbone).__name__} backbone'
                                       if backbone is not None else '')
        source = runner.cfg.get('load_from') or 'the checkpoint'
        lines = [f'{source} does not fit the model of this config ({arch}):']
        lines += _listing('tensors of another shape (key: checkpoint shape vs model shape)',
                          [f'{k}: {tuple(c)} vs {tuple(m)}' for k, c, m in shape])
        lines += _listing('keys the model needs, missing from the checkpoint',
                          [f'{k} {tuple(s)}' for k, s in missing])
        lines += _listing('keys in the checkpoint the model does not have',
                          [f'{k} {tuple(s)}' for k, s in unexpected])
        lines.append('Is it a checkpoint of another config? Evaluate it with the config it was '
                     'trained with. To load the matching tensors only and keep the others at '
                     "their initial values (mmengine's default), pass --non-strict to "
                     'tools/test.py.')
        raise CheckpointMismatchError('\n'.join(lines))
