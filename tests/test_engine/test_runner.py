"""The config edits behind tools/train.py and tools/test.py, and the checks the tools add."""
import copy
import os.path as osp
import re

import pytest
from mmengine.config import Config

from mmmod.engine import runner as engine_runner
from mmmod.engine.runner import (apply_test_args, apply_train_args, enable_visualization,
                                 prepare_environment)


def make_cfg(scope='mmpretrain', **extra):
    cfg = Config(
        dict(
            default_scope=scope,
            model=dict(type='ImageClassifier'),
            optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1)),
            test_evaluator=dict(type='Accuracy'),
            default_hooks=dict(visualization=dict(type='VisualizationHook')),
            visualizer=dict(type='Visualizer'),
            **extra))
    return cfg


def frozen(cfg):
    return copy.deepcopy(cfg._cfg_dict.to_dict())


def test_train_defaults(tmp_path):
    path = tmp_path / 'tiny_r18.py'
    path.write_text("default_scope = 'mmpretrain'\noptim_wrapper = dict(type='OptimWrapper')\n")
    cfg = Config.fromfile(path)
    before = frozen(cfg)
    new = apply_train_args(cfg)
    assert new.work_dir == './work_dirs/tiny_r18'
    assert new.launcher == 'none'
    assert 'resume' not in new
    assert frozen(cfg) == before


def test_work_dir_priority():
    assert apply_train_args(make_cfg(work_dir='cfg_dir')).work_dir == 'cfg_dir'
    assert apply_train_args(make_cfg(work_dir='cfg_dir'), work_dir='cli').work_dir == 'cli'


@pytest.mark.parametrize('resume, load_from', [
    ('auto', None),
    ('ckpt/iter_4.pth', 'ckpt/iter_4.pth'),
])
def test_resume(resume, load_from):
    new = apply_train_args(make_cfg(load_from='pretrained.pth'), resume=resume)
    assert new.resume is True
    assert new.load_from == load_from


def test_amp():
    new = apply_train_args(make_cfg(), amp=True)
    assert new.optim_wrapper.type == 'AmpOptimWrapper'
    assert new.optim_wrapper.loss_scale == 'dynamic'


def test_amp_refuses_other_wrappers():
    cfg = make_cfg()
    cfg.optim_wrapper.type = 'ApexOptimWrapper'
    with pytest.raises(ValueError, match='OptimWrapper'):
        apply_train_args(cfg, amp=True)


def test_auto_scale_lr():
    new = apply_train_args(make_cfg(auto_scale_lr=dict(base_batch_size=16)), auto_scale_lr=True)
    assert new.auto_scale_lr == dict(base_batch_size=16, enable=True)
    with pytest.raises(ValueError, match='base_batch_size'):
        apply_train_args(make_cfg(), auto_scale_lr=True)


def test_test_args_dump_and_checkpoint():
    cfg = make_cfg()
    before = frozen(cfg)
    new = apply_test_args(cfg, 'iter_4.pth', work_dir='w', out='preds.pkl', launcher='pytorch')
    assert new.load_from == 'iter_4.pth'
    assert new.launcher == 'pytorch'
    assert new.test_evaluator == [
        dict(type='Accuracy'), dict(type='DumpResults', out_file_path='preds.pkl')
    ]
    assert frozen(cfg) == before


def test_test_args_dump_for_mmdet_evaluator_list():
    cfg = make_cfg('mmdet', )
    cfg.test_evaluator = [dict(type='CocoMetric')]
    new = apply_test_args(cfg, 'c.pth', out='d.pkl')
    assert new.test_evaluator[-1] == dict(type='DumpDetResults', out_file_path='d.pkl')


def test_test_args_dump_into_evaluator_metrics():
    cfg = make_cfg()
    cfg.test_evaluator = dict(type='Evaluator', metrics=dict(type='Accuracy'))
    new = apply_test_args(cfg, 'c.pth', out='d.pkl')
    assert new.test_evaluator.metrics[-1].type == 'DumpResults'


def test_test_args_out_must_be_pickle():
    with pytest.raises(ValueError, match='.pkl'):
        apply_test_args(make_cfg(), 'c.pth', out='preds.json')


@pytest.mark.parametrize('scope, hook, section, key', [
    ('mmpretrain', dict(enable=True), 'default_hooks.visualization', 'out_dir'),
    ('mmdet', dict(draw=True), 'default_hooks.visualization', 'test_out_dir'),
    ('mmseg', dict(draw=True), 'visualizer', 'save_dir'),
])
def test_visualization_per_library(scope, hook, section, key):
    new = enable_visualization(make_cfg(scope), 'show')
    for name, value in hook.items():
        assert new.default_hooks.visualization[name] == value
    target = new
    for name in section.split('.'):
        target = target[name]
    assert target[key] == 'show'


def test_visualization_needs_hook():
    cfg = make_cfg()
    cfg.default_hooks = dict()
    with pytest.raises(KeyError, match='default_hooks.visualization'):
        enable_visualization(cfg, 'show')
    with pytest.raises(KeyError, match='default_scope'):
        enable_visualization(make_cfg('mmocr'), 'show')


def test_prepare_environment_checks_ops_for_mmdet_only(monkeypatch):
    calls = []
    monkeypatch.setattr(engine_runner, 'check_mmcv_ops', lambda: calls.append('ops'))
    monkeypatch.setattr(engine_runner, '_check_dataset_paths', lambda cfg, mode: None)
    prepare_environment(make_cfg('mmpretrain'))
    assert calls == []
    prepare_environment(make_cfg('mmdet'))
    assert calls == ['ops']


@pytest.mark.parametrize('mode, checked', [
    ('train', ['train_dataloader', 'val_dataloader']),
    ('test', ['test_dataloader']),
])
def test_prepare_environment_checks_data_the_run_reads(monkeypatch, mode, checked):
    seen = []
    monkeypatch.setattr(engine_runner, 'check_dataset_paths', seen.append)
    loaders = {name: dict(dataset=dict(type='CustomDataset')) for name in engine_runner.DATALOADERS}
    cfg = make_cfg(**loaders)
    assert prepare_environment(cfg, mode) is cfg  # no launcher: nothing to change
    assert [name for name in engine_runner.DATALOADERS if seen[0][name] is not None] == checked


def test_mmpretrain_dataloader_defaults():
    cfg = make_cfg(
        train_dataloader=dict(batch_size=2, num_workers=2),
        val_dataloader=dict(batch_size=2, num_workers=0, collate_fn=dict(type='pseudo_collate')))
    new = apply_train_args(cfg)
    assert new.train_dataloader.collate_fn.type == 'default_collate'
    assert new.train_dataloader.persistent_workers is True
    assert new.val_dataloader.collate_fn.type == 'pseudo_collate'  # the config wins
    assert 'persistent_workers' not in new.val_dataloader  # torch needs workers for it


def test_other_libraries_dataloaders_untouched():
    loader = dict(batch_size=2, num_workers=2)
    assert apply_train_args(make_cfg('mmdet', train_dataloader=loader)).train_dataloader == loader


def test_test_args_tta_wraps_the_model_and_swaps_the_pipeline():
    cfg = make_cfg()
    cfg.test_dataloader = dict(dataset=dict(type='ImageNet', pipeline=[dict(type='A')]))
    cfg.tta_model = dict(type='AverageClsScoreTTA')
    cfg.tta_pipeline = [dict(type='LoadImageFromFile'), dict(type='TestTimeAug', transforms=[])]
    before = frozen(cfg)
    new = apply_test_args(cfg, 'c.pth', tta=True)
    assert new.model == dict(type='AverageClsScoreTTA', module=dict(type='ImageClassifier'))
    assert new.test_dataloader.dataset.pipeline == cfg.tta_pipeline
    assert frozen(cfg) == before
    with pytest.raises(ValueError, match='--tta needs tta_model and tta_pipeline'):
        apply_test_args(make_cfg(), 'c.pth', tta=True)


def test_only_rank0_writes_the_test_metrics_json(monkeypatch):
    """mmengine's LoggerHook dumps the metrics json on every rank, into the same file."""
    from types import SimpleNamespace

    import mmengine.dist
    from mmengine.hooks import LoggerHook

    from mmmod.engine import runner as runner_module
    calls = []
    hook = LoggerHook()
    monkeypatch.setattr(LoggerHook, 'after_test_epoch',
                        lambda self, runner, metrics=None: calls.append(metrics))
    fake_runner = SimpleNamespace(hooks=[hook])
    monkeypatch.setattr(mmengine.dist, 'is_main_process', lambda: True)
    runner_module._metrics_json_on_rank0_only(fake_runner)
    hook.after_test_epoch(fake_runner, {'a': 1})
    assert calls == [{'a': 1}], 'rank 0 keeps the dump'
    monkeypatch.setattr(mmengine.dist, 'is_main_process', lambda: False)
    runner_module._metrics_json_on_rank0_only(fake_runner)
    hook.after_test_epoch(fake_runner, {'a': 2})
    assert calls == [{'a': 1}], 'other ranks skip it'


# -- empty datasets, where the Runner builds its dataloaders -------------------------------------
def classifier_cfg(data_root, work_dir, **dataset):
    """An mmpretrain ResNet-18 over the tiny ImageNet's val split, for ``runner.test()``."""
    loader = dict(
        batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dict(type='ImageNet', data_root=str(data_root), split='val',
                     pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')],
                     **dataset))
    return Config(dict(
        default_scope='mmpretrain',
        model=dict(type='ImageClassifier', backbone=dict(type='ResNet', depth=18),
                   neck=dict(type='GlobalAveragePooling'),
                   head=dict(type='LinearClsHead', num_classes=4, in_channels=512)),
        test_dataloader=loader, test_evaluator=dict(type='Accuracy'), test_cfg=dict(),
        work_dir=str(work_dir), log_level='WARNING',
        experiment_name=f'runner-{osp.basename(osp.dirname(work_dir))}'))  # one per test


@pytest.fixture
def empty_val_imagenet(tmp_path):
    from mmmod.datasets import make_imagenet
    root = make_imagenet(tmp_path / 'imagenet', num_classes=2, num_train_per_class=1,
                         num_val_per_class=1)
    open(osp.join(root, 'meta', 'val.txt'), 'w').close()
    return root


def test_runner_names_the_empty_dataset(empty_val_imagenet, tmp_path):
    from mmmod.datasets import EmptyDatasetError
    runner = engine_runner.build_runner(classifier_cfg(empty_val_imagenet, tmp_path / 'w'))
    ann_file = osp.join(empty_val_imagenet, 'meta', 'val.txt')
    with pytest.raises(EmptyDatasetError, match=re.escape(
            f'ImageNet at test_dataloader.dataset is empty: ann_file {ann_file} lists no '
            'samples')) as e:
        runner.test()
    # the error upstream gives, kept as the cause
    assert 'need at least one array to concatenate' in str(e.value.__cause__)


def test_runner_names_an_unserialised_empty_dataset(empty_val_imagenet, tmp_path):
    """Without serialisation an empty data list builds; the dataloader then has no samples."""
    from mmmod.datasets import EmptyDatasetError
    cfg = classifier_cfg(empty_val_imagenet, tmp_path / 'w', serialize_data=False)
    runner = engine_runner.build_runner(cfg)
    with pytest.raises(EmptyDatasetError, match='ImageNet at test_dataloader.dataset is empty'):
        runner.test()


def test_runner_keeps_other_dataset_errors(imagenet_data_root, tmp_path):
    cfg = classifier_cfg(imagenet_data_root, tmp_path / 'w')
    cfg.test_dataloader.dataset.pipeline = [dict(type='NoSuchTransform')]
    runner = engine_runner.build_runner(cfg)
    with pytest.raises(KeyError, match='NoSuchTransform'):
        runner.test()


def test_test_args_refuse_mismatched_checkpoints_unless_non_strict():
    strict = apply_test_args(make_cfg(custom_hooks=[dict(type='GateStatsHook')]), 'c.pth')
    assert strict.custom_hooks == [dict(type='GateStatsHook'), dict(type='CheckpointMatchHook')]
    assert apply_test_args(strict, 'c.pth').custom_hooks == strict.custom_hooks  # once
    assert 'custom_hooks' not in apply_test_args(make_cfg(), 'c.pth', strict=False)


SEG_PIPELINES = dict(
    train=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
           dict(type='RandomResize', scale=(64, 32)), dict(type='PackSegInputs')],
    test=[dict(type='LoadImageFromFile'), dict(type='Resize', scale=(64, 32)),
          dict(type='LoadAnnotations'), dict(type='PackSegInputs')])


@pytest.mark.parametrize('mode', ['train', 'test'])
def test_prepare_environment_checks_label_maps_of_the_run(monkeypatch, mode):
    monkeypatch.setattr(engine_runner, '_check_dataset_paths', lambda cfg, mode: None)
    loaders = {name: dict(dataset=dict(type='CityscapesDataset',
                                       pipeline=copy.deepcopy(SEG_PIPELINES[mode])))
               for name in engine_runner.DATALOADERS}
    cfg = make_cfg('mmseg', **loaders)
    before = frozen(cfg)
    new = prepare_environment(cfg, mode)
    assert frozen(cfg) == before
    for name in engine_runner.DATALOADERS:
        types = [t['type'] for t in new[name].dataset.pipeline]
        checked = name in engine_runner.RUN_DATALOADERS[mode]
        assert ('CheckSegMapShape' in types) == checked, (name, types)
        if checked:
            assert types[types.index('LoadAnnotations') + 1] == 'CheckSegMapShape'
