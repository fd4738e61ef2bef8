"""The stack end to end: a stock mmpretrain, mmseg and mmdet config, inherited by a user
config that only points the dataloaders at generated data and shrinks the work, goes through
``tools/train.py`` and ``tools/test.py`` and its standard metric lands in test.py's json.

The user configs are the overrides any config for 2 CPU cores and local data needs; each
override says which trap of the stock config it avoids. Two traps hold for all three:

- a child config's ``data_root = ...`` changes nothing inside the ``_base_`` dataloader
  dicts (they were evaluated in the base file), so every dataset's ``data_root`` is set;
- lists are replaced, not merged: a pipeline is rewritten whole to change one transform's
  scale, and so is mmdet's ``ConcatDataset(datasets=[VOC2007, VOC2012])``.
"""
import glob
import json
import math
import os
import os.path as osp
from typing import Dict, NamedTuple, Tuple

import pytest
from PIL import Image

from mmmod.datasets import make_cityscapes, make_imagenet, make_voc

pytestmark = pytest.mark.slow

# One process, both cores (the tools' subprocesses run one at a time).
THREADS = dict(OMP_NUM_THREADS='2', MKL_NUM_THREADS='2')
# test.py --latency: a short timing budget (LatencyHook's default, 10 warm-up calls and 30
# measurements, takes minutes for Faster R-CNN on a loaded machine); the tests check the wiring
LATENCY_BUDGET = ['--cfg-options', 'latency_cfg.warmup=1', 'latency_cfg.repeats=3']
# The stock dataloaders ask for 2-5 workers, persistent; torch refuses persistent workers
# without workers, so both go.
NO_WORKERS = 'num_workers=0, persistent_workers=False'

RESNET50_IN1K = f'''
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'

data_root = {{data_root!r}}
# stock: RandomResizedCrop 224 for training, 224 crops of images resized to 256 for testing
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=72, edge='short'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=2, {NO_WORKERS},
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, {NO_WORKERS},
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_epochs=1)  # stock: 100; 4 images, 2 iterations, val at the end
default_hooks = dict(logger=dict(interval=1))  # stock: 100, more than the run has
'''

FCN_R50_CITYSCAPES = f'''
_base_ = 'mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py'

data_root = {{data_root!r}}
crop_size = (64, 128)
scale = (256, 128)  # (w, h) of the generated images; stock: (2048, 1024)
model = dict(
    pretrained=None,  # stock: open-mmlab://resnet50_v1c, a download
    # stock: the base's crop_size (512, 1024); the model dict was built from it in the base
    # file, so redefining crop_size here leaves the padding size as it was
    data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2, {NO_WORKERS},
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, {NO_WORKERS},
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_iters=2, val_interval=2)  # stock: 80k iterations, val every 8k
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
'''

FASTER_RCNN_VOC0712 = f'''
_base_ = 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py'

data_root = {{data_root!r}}
scale = (300, 200)  # (w, h) of the generated images; stock: (1000, 600), a 3x upscale here
model = dict(backbone=dict(init_cfg=None))  # stock: torchvision://resnet50, a download
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
trainval = dict(
    type='VOCDataset',
    data_root=data_root,
    filter_cfg=dict(filter_empty_gt=True, min_size=32, bbox_min_size=32),
    pipeline=train_pipeline)
train_dataloader = dict(
    batch_size=2, {NO_WORKERS},
    dataset=dict(  # RepeatDataset(ConcatDataset([VOC2007, VOC2012]))
        times=1,  # stock: 3
        dataset=dict(datasets=[
            dict(trainval, ann_file='VOC2007/ImageSets/Main/trainval.txt',
                 data_prefix=dict(sub_data_root='VOC2007/')),
            dict(trainval, ann_file='VOC2012/ImageSets/Main/trainval.txt',
                 data_prefix=dict(sub_data_root='VOC2012/')),
        ])))
val_dataloader = dict(
    batch_size=1, {NO_WORKERS},
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_epochs=1)  # stock: 4; 4 images, 2 iterations, val at the end
default_hooks = dict(logger=dict(interval=1))  # stock: 50
'''


class StockCase(NamedTuple):
    template: str  # the user config, ``{data_root}`` to fill
    data_fixture: str  # the conftest fixture that writes the dataset
    checkpoint: str  # what training leaves as the last checkpoint
    train_iters: int
    metrics: Dict[str, Tuple[float, float]]  # test.py's json: key -> valid range


CASES = {
    'mmpretrain-resnet50-in1k':
    StockCase(RESNET50_IN1K, 'imagenet_data_root', 'epoch_1.pth', 2,
              {'accuracy/top1': (0, 100), 'accuracy/top5': (0, 100)}),
    'mmseg-fcn-r50-cityscapes':
    StockCase(FCN_R50_CITYSCAPES, 'cityscapes_data_root', 'iter_2.pth', 2,
              {'mIoU': (0, 100), 'aAcc': (0, 100), 'mAcc': (0, 100)}),
    'mmdet-faster-rcnn-r50-voc0712':
    StockCase(FASTER_RCNN_VOC0712, 'voc_data_root', 'epoch_1.pth', 2,
              {'pascal_voc/mAP': (0, 1), 'pascal_voc/AP50': (0, 1)}),
}


def _write_config(directory, case, data_root):
    path = directory / 'user_config.py'
    path.write_text(case.template.format(data_root=str(data_root)))
    return path


def _logged_scalars(work_dir):
    """The records of the run's ``scalars.json``: one per logged training iteration (with
    ``loss``) and one per validation (with the metrics)."""
    scalars = glob.glob(str(work_dir / '*' / 'vis_data' / 'scalars.json'))
    assert len(scalars) == 1, scalars
    with open(scalars[0]) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize('case', CASES.values(), ids=CASES.keys())
def test_stock_config_trains_and_tests(case, request, tmp_path, tool_env, run_tool):
    config = _write_config(tmp_path, case, request.getfixturevalue(case.data_fixture))
    env = tool_env(config, **THREADS)
    work_dir = tmp_path / 'train'

    train = run_tool(['train.py', config, '--work-dir', work_dir], env)
    assert train.returncode == 0, train.stdout[-4000:]
    records = _logged_scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == case.train_iters  # logger interval 1
    assert all(math.isfinite(loss) for loss in losses), losses
    val_metrics = [r for r in records if all(key in r for key in case.metrics)]
    assert len(val_metrics) == 1  # validation once, at the end
    checkpoint = (work_dir / 'last_checkpoint').read_text().strip()
    assert osp.basename(checkpoint) == case.checkpoint

    test_dir = tmp_path / 'test'
    # --latency: LatencyHook times batch-1 inference; its figures land in the same json
    test = run_tool(['test.py', config, checkpoint, '--work-dir', test_dir, '--latency', 'cpu',
                     *LATENCY_BUDGET], env)
    assert test.returncode == 0, test.stdout[-4000:]
    metrics_files = glob.glob(str(test_dir / '*' / '*.json'))
    assert len(metrics_files) == 1, metrics_files
    with open(metrics_files[0]) as f:
        metrics = json.load(f)
    for key, (low, high) in case.metrics.items():
        assert isinstance(metrics.get(key), (int, float)), (key, metrics)
        assert low <= metrics[key] <= high, (key, metrics)
    assert metrics['latency/cpu_ms'] > 0 and metrics['latency/cpu_ms_iqr'] >= 0, metrics
    # test.py evaluated the trained weights: the checkpoint was saved right before the
    # end-of-training validation, on the same images (test_dataloader = val_dataloader)
    assert {key: metrics[key] for key in case.metrics} == pytest.approx(
        {key: val_metrics[0][key] for key in case.metrics}, abs=1e-3)


@pytest.mark.parametrize('case', CASES.values(), ids=CASES.keys())
def test_stock_config_with_missing_data_root_fails(case, tmp_path, tool_env, run_tool):
    missing = tmp_path / 'no_such_dataset'
    config = _write_config(tmp_path, case, missing)

    train = run_tool(['train.py', config, '--work-dir', tmp_path / 'train'],
                     tool_env(config, **THREADS))
    assert train.returncode != 0
    assert 'FileNotFoundError' in train.stdout, train.stdout[-4000:]
    assert f'data_root not found: {missing}' in train.stdout, train.stdout[-4000:]


def _empty_imagenet(root):
    root = make_imagenet(root, num_classes=2, num_train_per_class=1, num_val_per_class=1)
    empty = osp.join(root, 'meta', 'train.txt')
    open(empty, 'w').close()
    return root, f'ImageNet at train_dataloader.dataset is empty: ann_file {empty} lists no samples'


def _empty_cityscapes(root):
    root = make_cityscapes(root, num_train=1, num_val=1)
    for path in glob.glob(osp.join(root, 'leftImg8bit', 'train', '*', '*.png')):
        os.remove(path)
    return root, ('CityscapesDataset at train_dataloader.dataset is empty: '
                  f'data_prefix.img_path {osp.join(root, "leftImg8bit/train")} holds no files')


def _empty_voc(root):
    root = make_voc(root, num_trainval=1, num_test=1)
    empty = osp.join(root, 'VOC2007/ImageSets/Main/trainval.txt')
    open(empty, 'w').close()
    return root, ('VOCDataset at train_dataloader.dataset.dataset.datasets[0] is empty: '
                  f'ann_file {empty} lists no samples')


# case -> writes the case's data with one training dataset emptied: (data_root, expected line)
EMPTY_DATA = {
    'mmpretrain-resnet50-in1k': _empty_imagenet,
    'mmseg-fcn-r50-cityscapes': _empty_cityscapes,
    'mmdet-faster-rcnn-r50-voc0712': _empty_voc,
}


@pytest.mark.parametrize('case_id', EMPTY_DATA)
def test_stock_config_with_empty_dataset_fails(case_id, tmp_path, tool_env, run_tool):
    data_root, expected = EMPTY_DATA[case_id](tmp_path / 'data')
    config = _write_config(tmp_path, CASES[case_id], data_root)

    train = run_tool(['train.py', config, '--work-dir', tmp_path / 'train'],
                     tool_env(config, **THREADS))
    assert train.returncode != 0
    assert 'EmptyDatasetError' in train.stdout, train.stdout[-4000:]
    assert expected in train.stdout, train.stdout[-4000:]
    assert 'need at least one array' in train.stdout  # upstream's error, kept as the cause


def test_cityscapes_label_map_of_another_size_fails_train_and_test(tmp_path, tool_env,
                                                                   run_tool):
    """A val label map at half its image's size: training (whose val pipeline reads it) and
    testing stop where the pair is loaded, naming both files."""
    case = CASES['mmseg-fcn-r50-cityscapes']
    root = make_cityscapes(tmp_path / 'data', num_train=2, num_val=2, image_size=(128, 256))
    label = sorted(glob.glob(osp.join(root, 'gtFine', 'val', '*', '*_labelTrainIds.png')))[0]
    image = label.replace('gtFine', 'leftImg8bit', 1).replace('_gtFine_labelTrainIds',
                                                              '_leftImg8bit')
    assert osp.exists(image)
    Image.open(label).resize((128, 64), Image.NEAREST).save(label)
    expected = f'label map {label} is 64x128 (HxW) but its image {image} is 128x256'
    config = _write_config(tmp_path, case, root)
    env = tool_env(config, **THREADS)

    work_dir = tmp_path / 'train'
    train = run_tool(['train.py', config, '--work-dir', work_dir], env)
    assert train.returncode != 0
    assert expected in train.stdout, train.stdout[-4000:]
    losses = [r['loss'] for r in _logged_scalars(work_dir) if 'loss' in r]
    assert len(losses) == case.train_iters  # the train labels fit: trained, then validated

    checkpoint = (work_dir / 'last_checkpoint').read_text().strip()
    test = run_tool(['test.py', config, checkpoint, '--work-dir', tmp_path / 'test'], env)
    assert test.returncode != 0
    assert expected in test.stdout, test.stdout[-4000:]
