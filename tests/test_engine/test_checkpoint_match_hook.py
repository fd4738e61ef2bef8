"""CheckpointMatchHook: a checkpoint that does not fit the model is refused before loading, with
its first mismatched keys; one that fits passes under mmengine's loading conventions."""
import re
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel, BaseTTAModel

from mmmod.engine.hooks import CheckpointMatchHook, CheckpointMismatchError
from mmmod.engine.hooks.checkpoint_match_hook import FIRST_KEYS, checkpoint_mismatches


class Net(BaseModel):
    """conv + BN + ``width`` linear layers, like a tiny classifier."""

    def __init__(self, width=2, classes=3):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        self.heads = torch.nn.ModuleList(torch.nn.Linear(4, classes) for _ in range(width))

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return inputs


def fake_runner(model, load_from='a.pth'):
    return SimpleNamespace(model=model, cfg=Config(dict(load_from=load_from)))


def test_fitting_checkpoints_pass_under_mmengine_conventions():
    model = Net()
    state = model.state_dict()
    ddp_keys = {f'module.{k}': v for k, v in state.items()}  # saved from a DDP model
    no_counter = {k: v for k, v in state.items() if 'num_batches_tracked' not in k}
    hook = CheckpointMatchHook()
    for checkpoint in (dict(state_dict=state, meta=dict()), dict(state_dict=ddp_keys),
                       dict(no_counter)):  # a bare state dict, old BN without the counter
        hook.after_load_checkpoint(fake_runner(model), checkpoint)

    class TTA(BaseTTAModel):
        def merge_preds(self, data_samples_list):
            return data_samples_list

    # mmengine loads into the module a TTA model wraps: its keys have no 'module.' prefix
    hook.after_load_checkpoint(fake_runner(TTA(module=model)), dict(state_dict=state))


def test_other_architecture_refused_with_first_keys():
    small, big = Net(width=2, classes=3), Net(width=FIRST_KEYS + 3, classes=5)
    checkpoint = dict(state_dict=small.state_dict())
    shape, missing, unexpected = checkpoint_mismatches(big, checkpoint)
    assert shape == [(f'heads.{i}.{p}', s3, s5) for i in range(2)
                     for p, s3, s5 in (('weight', (3, 4), (5, 4)), ('bias', (3, ), (5, )))]
    assert [k for k, _ in missing] == [f'heads.{i}.{p}' for i in range(2, FIRST_KEYS + 3)
                                       for p in ('weight', 'bias')]
    assert unexpected == []

    with pytest.raises(CheckpointMismatchError) as e:
        CheckpointMatchHook().after_load_checkpoint(fake_runner(big, 'work/epoch_1.pth'),
                                                    checkpoint)
    msg = str(e.value)
    assert msg.startswith('work/epoch_1.pth does not fit the model of this config '
                          '(Net with Sequential backbone):')
    assert '4 tensors of another shape (key: checkpoint shape vs model shape):' in msg
    assert 'heads.0.weight: (3, 4) vs (5, 4)' in msg
    n_missing = 2 * (FIRST_KEYS + 1)
    assert f'{n_missing} keys the model needs, missing from the checkpoint (first ' \
           f'{FIRST_KEYS}):' in msg
    assert 'heads.2.weight (5, 4)' in msg
    listed = re.findall(r'^    heads\.\d+\.\w+ \(', msg, flags=re.M)
    assert len(listed) == FIRST_KEYS  # missing keys, truncated
    assert '--non-strict' in msg


def test_unexpected_keys_refused():
    big, small = Net(width=3), Net(width=2)
    with pytest.raises(CheckpointMismatchError,
                       match=re.escape('2 keys in the checkpoint the model does not have:\n'
                                       '    heads.2.weight (3, 4)\n    heads.2.bias (3,)')):
        CheckpointMatchHook().after_load_checkpoint(fake_runner(small),
                                                    dict(state_dict=big.state_dict()))


def test_revise_keys_follow_the_runner():
    model = Net()
    prefixed = {f'ema.{k}': v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match='missing from the checkpoint'):
        CheckpointMatchHook().after_load_checkpoint(fake_runner(model), prefixed)
    CheckpointMatchHook(revise_keys=[(r'^ema\.', '')]).after_load_checkpoint(
        fake_runner(model), prefixed)
