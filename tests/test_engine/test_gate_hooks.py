"""GateTargetHook and GateStatsHook on a tiny gated classifier run by mmengine's Runner; the
gate optimizer constructor; BN recalibration."""
import copy
import glob
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.runner import Runner

from mmmod.engine import GateOptimWrapperConstructor, find_gated_backbone
from mmmod.engine.bn_recalibration import recalibrate_bn
from mmmod.engine.hooks import GateStatsHook, GateTargetHook
from mmmod.registry import MODELS


def tiny_cfg(data_root, work_dir, custom_hooks=(), max_epochs=2, gate_type='dependent',
             val=False):
    """A GatedResNet-18 classifier over the tiny ImageNet (4 classes, 1 image per class and
    split, 64x64): 2 iterations per epoch, validation after every epoch if ``val``."""
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]

    def loader(split, shuffle):
        return dict(batch_size=2, num_workers=0,
                    dataset=dict(type='ImageNet', data_root=str(data_root), split=split,
                                 pipeline=pipeline),
                    sampler=dict(type='DefaultSampler', shuffle=shuffle))

    return dict(
        default_scope='mmpretrain',
        custom_imports=dict(imports=['mmmod'], allow_failed_imports=False),
        model=dict(
            type='ImageClassifier',
            backbone=dict(type='GatedResNet', depth=18, gate_type=gate_type,
                          gate_loss=dict(type='BatchActivationLoss', target=0.5)),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=4, in_channels=512,
                      loss=dict(type='CrossEntropyLoss'), topk=(1, ))),
        data_preprocessor=dict(num_classes=4, mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], to_rgb=True),
        train_dataloader=loader('train', True),
        val_dataloader=loader('val', False),
        test_dataloader=loader('val', False),
        val_evaluator=dict(type='Accuracy', topk=(1, )),
        test_evaluator=dict(type='Accuracy', topk=(1, )),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs, val_interval=1 if val else 100),
        val_cfg=dict(),
        test_cfg=dict(),
        optim_wrapper=dict(constructor='GateOptimWrapperConstructor',
                           optimizer=dict(type='SGD', lr=0.01, momentum=0.9,
                                          weight_decay=1e-4)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='CheckpointHook', interval=100)),
        custom_hooks=list(custom_hooks),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo')),
        randomness=dict(seed=0),
        work_dir=str(work_dir),
        # unique per test: mmengine shares the Visualizer of runners with the same experiment
        # name, which defaults to the second the runner was built in
        experiment_name=f'gate-hooks-{osp.basename(str(work_dir))}',
        log_level='WARNING')


def _scalars(runner):
    with open(osp.join(runner.log_dir, 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f]


class TargetRecorder:
    """Records the loss target each training iteration ran with."""

    def __init__(self):
        self.targets = []

    def __call__(self, module, args, output):
        if module.training:
            self.targets.append(module.gate_loss.target)


# -- GateTargetHook ------------------------------------------------------------------------------
def test_step_schedule_goes_down_to_the_floor():
    hook = GateTargetHook(start=1.0, end=0.8, step=0.05, interval=5)
    got = [hook.target_at(epoch) for epoch in range(0, 30, 5)]
    assert got == pytest.approx([1.0, 0.95, 0.9, 0.85, 0.8, 0.8])  # paper S4.4: 1.0 ... .8
    assert hook.target_at(4) == 1.0 and hook.target_at(9) == pytest.approx(0.95)


@pytest.mark.parametrize('kwargs, match', [
    (dict(policy='cosine'), "policy must be one of \\['step', 'variable'\\]"),
    (dict(average='median'), "average must be one of \\['ema', 'mean'\\]"),
    (dict(start=1.5), r'start must be a rate in \[0, 1\]'),
    (dict(start=0.5, end=0.6), 'end must be <= start'),
    (dict(interval=0), 'interval must be an int >= 1'),
    (dict(momentum=1.0), r'momentum must be in \[0, 1\)'),
    (dict(statistic='acc'), 'statistic must be one of'),
])
def test_target_hook_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GateTargetHook(**kwargs)


def test_step_annealing_in_training(imagenet_data_root, tmp_path):
    """Annealing by epoch (1.0, then 0.9) and by iteration (down to the loss's 0.5 target
    as the floor); the loss sees the target and the log records it."""
    hook = dict(type='GateTargetHook', start=1.0, step=0.1, interval=1)
    cfg = tiny_cfg(imagenet_data_root, tmp_path / 'epoch', [hook], max_epochs=2)
    runner = Runner.from_cfg(Config(cfg))
    recorder = TargetRecorder()
    find_gated_backbone(runner.model).register_forward_hook(recorder)
    runner.train()
    assert recorder.targets == pytest.approx([1.0, 1.0, 0.9, 0.9])
    logged = [r['gate_target'] for r in _scalars(runner) if 'gate_target' in r]
    assert logged == pytest.approx(recorder.targets)

    hook = dict(type='GateTargetHook', start=0.7, step=0.1, interval=1, by_epoch=False)
    runner = Runner.from_cfg(Config(tiny_cfg(imagenet_data_root, tmp_path / 'iter', [hook])))
    recorder = TargetRecorder()
    find_gated_backbone(runner.model).register_forward_hook(recorder)
    runner.train()
    assert recorder.targets == pytest.approx([0.7, 0.6, 0.5, 0.5])  # floor: the loss's 0.5


@pytest.mark.parametrize('average', ['ema', 'mean'])
def test_variable_target_follows_the_rate_and_restarts(average, imagenet_data_root, tmp_path):
    hook = dict(type='GateTargetHook', policy='variable', start=0.9, average=average,
                momentum=0.5)
    runner = Runner.from_cfg(Config(tiny_cfg(imagenet_data_root, tmp_path, [hook])))
    backbone = find_gated_backbone(runner.model)
    seen = []  # (target used, rate measured) per training forward
    backbone.register_forward_hook(lambda m, a, o: seen.append(
        (m.gate_loss.target, m.gate_stats['gate_rate'])) if m.training else None)
    runner.train()
    assert len(seen) == 4  # 2 epochs x 2 iterations
    (t0, r0), (t1, r1), (t2, r2), (t3, _) = seen
    assert t0 == t2 == 0.9  # restarted every epoch
    if average == 'ema':
        assert t1 == pytest.approx(0.5 * 0.9 + 0.5 * r0)
        assert t3 == pytest.approx(0.5 * 0.9 + 0.5 * r2)
    else:
        assert t1 == pytest.approx((0.9 + r0) / 2)
        assert t3 == pytest.approx((0.9 + r2) / 2)
    assert r0 < 1  # the gates are sampled: the target really moved
    assert t1 != 0.9


def test_target_hook_needs_a_gate_loss(imagenet_data_root, tmp_path):
    cfg = tiny_cfg(imagenet_data_root, tmp_path, [dict(type='GateTargetHook')])
    cfg['model']['backbone']['gate_loss'] = None
    with pytest.raises(ValueError, match='has no gate loss to set a target on'):
        Runner.from_cfg(Config(cfg)).train()


# -- GateStatsHook -------------------------------------------------------------------------------
def test_stats_in_training_log_and_metrics(imagenet_data_root, tmp_path):
    runner = Runner.from_cfg(Config(tiny_cfg(imagenet_data_root, tmp_path,
                                             [dict(type='GateStatsHook')], max_epochs=1,
                                             val=True)))
    backbone = find_gated_backbone(runner.model)
    train_stats, test_stats = [], []
    backbone.register_forward_hook(lambda m, a, o: (train_stats if m.training else test_stats)
                                   .append((a[0].shape[0], m.gate_stats)))
    runner.train()
    records = _scalars(runner)
    logged = [r for r in records if 'loss' in r]
    assert [r['gate_rate'] for r in logged] == pytest.approx(
        [s['gate_rate'] for _, s in train_stats])
    losses = [s['gate_loss'] for _, s in train_stats]
    # LoggerHook averages '*loss*' keys over its window (10 iterations)
    assert [r['gate_loss'] for r in logged] == pytest.approx(
        [sum(losses[:i + 1]) / (i + 1) for i in range(len(losses))])
    assert all(0 < r['gate_flops_ratio'] <= 1 for r in logged)
    val = [r for r in records if 'accuracy/top1' in r]
    assert len(val) == 1 and 'gate/rate' in val[0]

    test_stats.clear()
    metrics = runner.test()
    images = sum(n for n, _ in test_stats)
    assert images == 4
    expected_rate = sum(n * s['gate_rate'] for n, s in test_stats) / images
    expected_gflops = sum(n * (s['gated_gflops'] + s['gate_net_gflops'])
                          for n, s in test_stats) / images
    assert metrics['gate/rate'] == pytest.approx(expected_rate)
    assert metrics['gate/gflops'] == pytest.approx(expected_gflops)
    assert 0 < metrics['gate/flops_ratio'] <= 1
    with open(glob.glob(osp.join(runner.log_dir, '*.json'))[0]) as f:
        assert json.load(f)['gate/rate'] == pytest.approx(expected_rate)
    # gated-off gates cost less: close every learned gate of an independent model
    for _, block in __import__('mmmod.models.layers.gumbel_gate', fromlist=['x']) \
            .iter_gated_blocks(backbone):
        if block.gate is not None:
            with torch.no_grad():
                block.gate.fc2.bias.view(-1, 2)[:] = torch.tensor([4.0, -4.0])
    closed = runner.test()
    assert closed['gate/rate'] < 0.01 < metrics['gate/rate']
    assert closed['gate/gflops'] < metrics['gate/gflops']


def test_grad_scale_follows_amp_and_accumulation():
    model = torch.nn.Linear(2, 2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert GateStatsHook.grad_scale(OptimWrapper(sgd)) == 1.0
    acc = OptimWrapper(sgd, accumulative_counts=4)
    acc.initialize_count_status(model, 0, 10)  # 10 iterations: windows of 4, 4, then 2
    assert GateStatsHook.grad_scale(acc) == pytest.approx(0.25)
    acc._inner_count = 8
    assert GateStatsHook.grad_scale(acc) == pytest.approx(0.5)  # the short last window
    if torch.cuda.is_available():
        amp = AmpOptimWrapper(optimizer=sgd, loss_scale=512.0)
        assert GateStatsHook.grad_scale(amp) == pytest.approx(512.0)


def test_amp_scale_reaches_the_backbone(imagenet_data_root, tmp_path):
    """The hook writes the loss scale into the backbone before each training forward."""
    runner = Runner.from_cfg(Config(tiny_cfg(imagenet_data_root, tmp_path,
                                             [dict(type='GateStatsHook')], max_epochs=1)))
    backbone = find_gated_backbone(runner.model)
    scales = []
    backbone.register_forward_pre_hook(
        lambda m, a: scales.append(m.gate_loss_grad_scale) if m.training else None)

    class FakeScaler:  # what AmpOptimWrapper.loss_scaler offers (torch's GradScaler)
        def get_scale(self):
            return 64.0

    def patch(runner_):
        runner_.optim_wrapper.loss_scaler = FakeScaler()
        runner_.optim_wrapper.backward = lambda loss, **kw: None  # no real scaling on CPU

    runner.register_hook(type('Patch', (GateStatsHook, ), dict(
        before_train=lambda self, r: patch(r), before_train_iter=lambda *a, **k: None,
        after_train_iter=lambda *a, **k: None, before_val_epoch=lambda *a: None,
        after_val_epoch=lambda *a, **k: None))(), 'LOWEST')
    runner.train()
    assert scales == [64.0, 64.0]


# -- GateOptimWrapperConstructor -----------------------------------------------------------------
@pytest.mark.parametrize('scale', [20, 40])
def test_constructor_scales_gate_decay(scale):
    model = MODELS.build(dict(type='GatedResNet', depth=18, gate_type='independent'))
    constructor = GateOptimWrapperConstructor(
        dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4)),
        dict(gate_decay_scale=scale, norm_decay_mult=0.0))
    optim_wrapper = constructor(model)
    decay = {}
    for group in optim_wrapper.optimizer.param_groups:
        for p in group['params']:
            decay[id(p)] = group['weight_decay']
    gate_wd = 1e-4 * scale / model.num_gates
    norm_params = {id(p) for m in model.modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for p in m.parameters(recurse=False)}
    for name, p in model.named_parameters():
        if '.gate.' in name:
            assert decay[id(p)] == pytest.approx(gate_wd), name
        elif id(p) in norm_params:
            assert decay[id(p)] == 0.0, name  # the rest of paramwise_cfg still applies
        else:
            assert decay[id(p)] == pytest.approx(1e-4), name
    assert any('.gate.' in n for n, _ in model.named_parameters())
    assert len(decay) == len(list(model.parameters()))


def test_constructor_errors():
    with pytest.raises(ValueError, match='needs weight_decay'):
        GateOptimWrapperConstructor(dict(optimizer=dict(type='SGD', lr=0.1)))
    with pytest.raises(ValueError, match="sets custom_keys\\['.gate.'\\] itself"):
        GateOptimWrapperConstructor(dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4)),
                                    dict(custom_keys={'.gate.': dict(decay_mult=0.)}))
    plain = MODELS.build(dict(type='ResNetMoD', depth=18))
    constructor = GateOptimWrapperConstructor(
        dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4)))
    with pytest.raises(ValueError, match='has no gated backbone'):
        constructor(plain)


# -- BN recalibration ----------------------------------------------------------------------------
@pytest.mark.parametrize('gate_mode', ['train', 'inference'])
def test_recalibrate_bn_changes_running_stats_only(gate_mode, imagenet_data_root, tmp_path):
    runner = Runner.from_cfg(Config(tiny_cfg(imagenet_data_root, tmp_path)))
    model = runner.model
    before = copy.deepcopy(model.state_dict())
    loader = runner.build_dataloader(runner.cfg.train_dataloader)
    batches = list(loader)  # 2 batches of 2 images
    done = recalibrate_bn(model, batches, num_batches=3, gate_mode=gate_mode, progress=False)
    after = copy.deepcopy(model.state_dict())
    stats = [k for k in before if k.endswith(('running_mean', 'running_var'))]
    assert done['num_bn'] > 0 and stats
    assert all(not torch.equal(before[k], after[k]) for k in stats)
    for key in before:
        if not key.endswith(('running_mean', 'running_var', 'num_batches_tracked')):
            assert torch.equal(before[key], after[key]), key
    assert not model.training
    # cumulative average over the 3 batches (batch 0 twice): the stem BN's mean is the mean
    # of its per-batch means
    stem_means = []
    hook = model.backbone.conv1.register_forward_hook(
        lambda m, a, o: stem_means.append(o.mean((0, 2, 3))))
    model.train()
    with torch.no_grad():
        for batch in (batches[0], batches[1], batches[0]):
            model.extract_feat(model.data_preprocessor(batch, True)['inputs'])
    hook.remove()
    assert torch.allclose(after['backbone.bn1.running_mean'], torch.stack(stem_means).mean(0),
                          atol=1e-5)


def test_recalibrate_bn_errors():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="gate_mode must be one of \\['train', 'inference'\\]"):
        recalibrate_bn(model, [], gate_mode='eval')
    with pytest.raises(ValueError, match='no BatchNorm layer in training mode'):
        recalibrate_bn(model, [], num_batches=1)
