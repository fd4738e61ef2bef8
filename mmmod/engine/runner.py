"""What ``tools/train.py`` and ``tools/test.py`` do beyond parsing arguments.

The tools follow OpenMMLab's command line (``config``, ``--work-dir``, ``--resume``,
``--amp``, ``--cfg-options``, ``--launcher``) for mmpretrain, mmseg and mmdet configs alike:
the config's ``default_scope`` selects the library. The config edits live here, as functions
that return a new config, so tests can call them without a subprocess.

What the tools check beyond upstream, each where the problem first becomes visible:

- dataset paths, before anything is built (:func:`prepare_environment`);
- label maps against their images, in the pipeline right after ``LoadAnnotations``
  (:func:`mmmod.datasets.transforms.with_seg_map_checks`, from :func:`prepare_environment`);
- empty datasets, where the Runner's loops build their dataloaders (:func:`build_runner`);
- a checkpoint that does not fit the model, where mmengine has read it and not yet loaded it
  (``CheckpointMatchHook``, added by :func:`apply_test_args`);
- another live training run on the work dir (:func:`run_train`, ``work_dir_lock``).
"""
import copy
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmmod.compat import allow_unsafe_checkpoint_loading, check_mmcv_ops, setup_distributed
from mmmod.datasets import EmptyDatasetError, check_dataset_paths, check_datasets_not_empty
from mmmod.datasets.transforms import with_seg_map_checks
from mmmod.engine.work_dir_lock import work_dir_lock

__all__ = [
    'add_common_args', 'load_config', 'apply_train_args', 'apply_test_args',
    'enable_visualization', 'prepare_environment',
    'build_runner', 'run_train', 'run_test'
]

# Scopes whose models call mmcv's compiled ops (RoIAlign, NMS in Faster R-CNN).
SCOPES_NEEDING_MMCV_OPS = ('mmdet', )
# The metric each library's tools/test.py appends for ``--out``: mmdet's variant also
# encodes masks as RLE; the others dump the raw predictions.
DUMP_METRIC = {'mmdet': 'DumpDetResults'}
DEFAULT_DUMP_METRIC = 'DumpResults'
# Dataloader settings a library's tools fill in where its configs are silent (mmpretrain's
# tools/train.py and test.py); the config's own values win.
DATALOADER_DEFAULTS = {
    'mmpretrain':
    dict(pin_memory=True, persistent_workers=True, collate_fn=dict(type='default_collate')),
}
DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
# The hook that refuses a checkpoint of another architecture (tools/test.py without --non-strict).
MATCH_HOOK = 'CheckpointMatchHook'
# The dataloaders a run reads: testing a checkpoint must not need the training data on disk.
RUN_DATALOADERS = {'train': ('train_dataloader', 'val_dataloader'), 'test': ('test_dataloader', )}
# How each library's tools/test.py switches its VisualizationHook on and where the painted
# images go: hook arguments, and the (section, key) that takes the folder.
VISUALIZATION = {
    'mmpretrain': (dict(enable=True), ('default_hooks.visualization', 'out_dir')),
    'mmdet': (dict(draw=True), ('default_hooks.visualization', 'test_out_dir')),
    'mmseg': (dict(draw=True), ('visualizer', 'save_dir')),
}


def add_common_args(parser):
    """The options tools/train.py and tools/test.py share (OpenMMLab's command line)."""
    parser.add_argument(
        '--unsafe-load-checkpoint',
        action='store_true',
        help='load checkpoints with the full pickle unpickler '
        '(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1). Unpickling can run arbitrary code: only for '
        'trusted legacy checkpoints holding objects beyond what mmengine writes')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, xxx=yyy; lists as key="[a,b]" or key=a,b')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def load_config(args):
    """The config named by ``args`` (from :func:`add_common_args`), options merged."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.unsafe_load_checkpoint:
        allow_unsafe_checkpoint_loading()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def _default_work_dir(cfg) -> str:
    name = osp.splitext(osp.basename(cfg.filename or 'config'))[0]
    return osp.join('./work_dirs', name)


def _dataloader_defaults(scope, dataloader_cfg) -> dict:
    defaults = copy.deepcopy(DATALOADER_DEFAULTS.get(scope, {}))
    # torch refuses persistent workers without workers; pinning needs a GPU to help
    if not dataloader_cfg.get('num_workers', 0):
        defaults.pop('persistent_workers', None)
    if not torch.cuda.is_available():
        defaults.pop('pin_memory', None)
    return defaults


def _with_run_settings(cfg, work_dir, launcher):
    """A copy of ``cfg`` with launcher, work_dir (CLI > config > ./work_dirs/NAME) and the
    library's dataloader defaults set."""
    cfg = copy.deepcopy(cfg)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = _default_work_dir(cfg)
    for name in DATALOADERS:
        if cfg.get(name) is not None:
            cfg[name] = dict(_dataloader_defaults(cfg.get('default_scope'), cfg[name]),
                             **cfg[name])
    return cfg


def apply_train_args(cfg,
                     *,
                     work_dir=None,
                     resume=None,
                     amp=False,
                     auto_scale_lr=False,
                     launcher='none'):
    """The training config after ``tools/train.py``'s options.

    Args:
        cfg (mmengine.Config): Loaded config (``--cfg-options`` already merged); not modified.
        work_dir (str, optional): ``--work-dir``.
        resume (str, optional): ``'auto'`` resumes from the latest checkpoint in
            ``work_dir``; a path resumes from that checkpoint; None starts afresh.
        amp (bool): Switch ``OptimWrapper`` to ``AmpOptimWrapper`` (dynamic loss scale).
        auto_scale_lr (bool): Enable the config's ``auto_scale_lr``.
        launcher (str): ``none``, ``pytorch``, ``slurm`` or ``mpi``.

    Returns:
        mmengine.Config: A new config.
    """
    cfg = _with_run_settings(cfg, work_dir, launcher)
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume

    if amp:
        wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper_type == 'AmpOptimWrapper':
            print_log('AMP training is already enabled in the config.', 'current')
        elif wrapper_type != 'OptimWrapper':
            raise ValueError(
                f'--amp needs optim_wrapper type OptimWrapper, got {wrapper_type!r}.')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    if auto_scale_lr:
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) '
                             'in the config.')
        cfg.auto_scale_lr.enable = True
    return cfg


def enable_visualization(cfg, show_dir):
    """A copy of ``cfg`` whose VisualizationHook paints test results into ``show_dir``.

    Each library switches its hook on differently (see :data:`VISUALIZATION`).

    Raises:
        KeyError: when the scope is unknown or the config has no visualization hook.
    """
    scope = cfg.get('default_scope')
    if scope not in VISUALIZATION:
        raise KeyError(f'--show-dir supports default_scope in {sorted(VISUALIZATION)}, '
                       f'got {scope!r}.')
    if 'visualization' not in cfg.get('default_hooks', {}):
        raise KeyError('--show-dir needs default_hooks.visualization in the config, e.g. '
                       'visualization=dict(type="VisualizationHook").')
    hook_args, (section, key) = VISUALIZATION[scope]
    cfg = copy.deepcopy(cfg)
    cfg.default_hooks.visualization.update(hook_args)
    target = cfg
    for name in section.split('.'):
        target = target[name]
    target[key] = show_dir
    return cfg


def _with_dump_metric(evaluator_cfg, dump_cfg):
    """``test_evaluator`` (a metric, a list of metrics or an Evaluator) plus ``dump_cfg``."""
    if isinstance(evaluator_cfg, dict) and 'metrics' in evaluator_cfg:
        metrics = evaluator_cfg['metrics']
        metrics = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
        return dict(evaluator_cfg, metrics=[*metrics, dump_cfg])
    if isinstance(evaluator_cfg, (list, tuple)):
        return [*evaluator_cfg, dump_cfg]
    return [evaluator_cfg, dump_cfg]


def apply_test_args(cfg, checkpoint, *, work_dir=None, out=None, show_dir=None, launcher='none',
                    tta=False, strict=True):
    """The test config after ``tools/test.py``'s options.

    Args:
        cfg (mmengine.Config): Loaded config (``--cfg-options`` already merged); not modified.
        checkpoint (str): Weights to evaluate (``load_from``).
        work_dir (str, optional): Where the metrics json and logs go.
        out (str, optional): A ``.pkl`` file to dump the raw predictions into.
        show_dir (str, optional): Folder for painted predictions.
        launcher (str): ``none``, ``pytorch``, ``slurm`` or ``mpi``.
        tta (bool): test-time augmentation as mmpretrain/mmseg/mmdet do it: the config's
            ``tta_model`` wraps its model and ``tta_pipeline`` replaces the test pipeline.
        strict (bool): refuse a checkpoint whose weights do not fit the model
            (``CheckpointMatchHook``); False loads what fits, as mmengine does.

    Returns:
        mmengine.Config: A new config.
    """
    cfg = _with_run_settings(cfg, work_dir, launcher)
    cfg.load_from = checkpoint
    hooks = list(cfg.get('custom_hooks') or [])
    if strict and not any(hook.get('type') == MATCH_HOOK for hook in hooks):
        cfg.custom_hooks = [*hooks, dict(type=MATCH_HOOK)]
    if tta:
        missing = [key for key in ('tta_model', 'tta_pipeline') if cfg.get(key) is None]
        if missing:
            raise ValueError(f'--tta needs {" and ".join(missing)} in the config (see the '
                             f'configs/gating/resnet50-gate-dep-t05-ens5 config for an example)')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.model = dict(cfg.tta_model, module=cfg.model)
    if show_dir is not None:
        cfg = enable_visualization(cfg, show_dir)
    if out is not None:
        if not out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must name a .pkl or .pickle file, got {out!r}.')
        dump_type = DUMP_METRIC.get(cfg.get('default_scope'), DEFAULT_DUMP_METRIC)
        cfg.test_evaluator = _with_dump_metric(cfg.test_evaluator,
                                               dict(type=dump_type, out_file_path=out))
    return cfg


def _check_dataset_paths(cfg, mode) -> None:
    cfg = copy.deepcopy(cfg)
    for name in set(DATALOADERS) - set(RUN_DATALOADERS[mode]):
        cfg[name] = None  # check_dataset_paths skips dataloaders set to None
    check_dataset_paths(cfg)


def prepare_environment(cfg, mode='train'):
    """Check what the run needs before the Runner is built; return the config to build.

    mmcv's compiled ops for detection configs, the data the run reads (``mode`` 'train':
    train and val dataloaders, 'test': the test dataloader) with
    ``mmmod.datasets.check_dataset_paths``, a ``CheckSegMapShape`` after each
    ``LoadAnnotations`` of those dataloaders' pipelines (label map vs image size, see
    :mod:`mmmod.datasets.transforms`), and the CPU distributed setup of
    :func:`mmmod.compat.setup_distributed` for ``cfg.launcher``.
    """
    if cfg.get('default_scope') in SCOPES_NEEDING_MMCV_OPS:
        check_mmcv_ops()
    _check_dataset_paths(cfg, mode)
    cfg = with_seg_map_checks(cfg, RUN_DATALOADERS[mode])
    return setup_distributed(cfg, cfg.get('launcher', 'none'))


def build_runner(cfg) -> Runner:
    """``Runner.from_cfg``, or the registered runner a config names with ``runner_type``; its
    dataloaders name an empty dataset (:func:`_naming_empty_datasets`)."""
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.build_dataloader = _naming_empty_datasets(cfg, runner.build_dataloader)
    return runner


def _naming_empty_datasets(cfg, build_dataloader):
    """``build_dataloader`` that raises ``EmptyDatasetError`` for a dataset without samples.

    mmengine's loops build their dataloaders through ``runner.build_dataloader`` (BaseLoop), the
    first place a dataset's data list is read. An empty one ends there in numpy's "need at least
    one array to concatenate" (mmengine serialising the list), in the dataset class's own error,
    or, unserialised, in a loop over nothing. When the build fails or gives no samples,
    :func:`mmmod.datasets.check_datasets_not_empty` reads the data lists again to tell which
    dataset is empty and why; otherwise the original error stands. A good build costs nothing
    extra.
    """

    def where(dataloader) -> str:
        names = [name for name in DATALOADERS if cfg.get(name) == dataloader]
        return ', '.join(f'{name}.dataset' for name in names) or 'dataloader.dataset'

    def build(dataloader, *args, **kwargs):
        dataset_cfg = dataloader.get('dataset') if isinstance(dataloader, dict) else None
        try:
            loader = build_dataloader(dataloader, *args, **kwargs)
        except Exception as error:
            if isinstance(dataset_cfg, dict):
                try:
                    check_datasets_not_empty(dataset_cfg, where(dataloader))
                except EmptyDatasetError as empty:
                    raise empty from error
            raise
        try:
            num_samples = len(loader.dataset)
        except TypeError:  # an IterableDataset has no length
            return loader
        if num_samples == 0:
            if isinstance(dataset_cfg, dict):
                check_datasets_not_empty(dataset_cfg, where(dataloader))
            raise EmptyDatasetError(f'{type(loader.dataset).__name__} at {where(dataloader)} '
                                    'has no samples; a run needs at least one.')
        return loader

    return build


def run_train(cfg) -> Runner:
    """Lock the work dir, check the environment, build the runner and train. Returns the
    runner.

    A live run on the same work dir stops this one with ``WorkDirInUseError``
    (:mod:`mmmod.engine.work_dir_lock`); the lock is taken before anything is written there.
    """
    with work_dir_lock(cfg.work_dir, cfg.get('launcher', 'none')):
        runner = build_runner(prepare_environment(cfg, 'train'))
        runner.train()
    return runner


def run_test(cfg) -> dict:
    """Check the environment, build the runner and test. Returns the metrics."""
    runner = build_runner(prepare_environment(cfg, 'test'))
    _metrics_json_on_rank0_only(runner)
    return runner.test()


def _metrics_json_on_rank0_only(runner) -> None:
    """mmengine 0.10.7's LoggerHook dumps the test metrics json on every rank, to the same
    file (the timestamp is broadcast): two ranks writing it at once can leave it corrupt.
    The metrics are gathered already, so the other ranks skip that step."""
    from mmengine.dist import is_main_process
    from mmengine.hooks import LoggerHook
    if is_main_process():
        return
    for hook in runner.hooks:
        if isinstance(hook, LoggerHook):
            hook.after_test_epoch = lambda runner, metrics=None: None
