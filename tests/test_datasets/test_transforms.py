"""CheckSegMapShape: a label map of another size than its image is refused, naming both files,
in the stock mmseg pipelines the tools run."""
import glob
import importlib
import os.path as osp
import re

import numpy as np
import pytest
from mmengine import Config
from mmengine.registry import DefaultScope
from PIL import Image

from mmmod.datasets import make_cityscapes
from mmmod.datasets.transforms import CheckSegMapShape, with_seg_map_checks


def pair(img_hw, seg_hw):
    return dict(img_path='a_leftImg8bit.png', seg_map_path='a_gtFine_labelTrainIds.png',
                ori_shape=img_hw, img_shape=(img_hw[0] // 2, img_hw[1] // 2),
                gt_seg_map=np.zeros(seg_hw, np.uint8))


def test_mismatch_names_both_files():
    with pytest.raises(ValueError, match=re.escape(
            'label map a_gtFine_labelTrainIds.png is 64x128 (HxW) but its image '
            'a_leftImg8bit.png is 128x256')):
        CheckSegMapShape()(pair((128, 256), (64, 128)))


def test_matching_pair_and_pairs_without_map_pass():
    results = pair((128, 256), (128, 256))  # img_shape halved by a Resize before: no matter
    assert CheckSegMapShape()(dict(results)) == results
    boxes_only = dict(img_path='a.jpg', ori_shape=(10, 10))
    assert CheckSegMapShape()(dict(boxes_only)) == boxes_only


def test_checks_inserted_once_through_wrappers_and_shared_pipelines():
    pipeline = [dict(type='LoadImageFromFile'), dict(type='mmseg.LoadAnnotations'),
                dict(type='PackSegInputs')]
    loader = dict(dataset=dict(type='RepeatDataset', times=2, dataset=dict(
        type='ConcatDataset', datasets=[dict(type='A', pipeline=pipeline),
                                        dict(type='B', pipeline=pipeline)])))
    cfg = Config(dict(val_dataloader=loader))
    cfg.test_dataloader = cfg.val_dataloader  # one object, as `test_dataloader = val_dataloader`
    new = with_seg_map_checks(cfg, ['val_dataloader', 'test_dataloader'])
    for name in ('val_dataloader', 'test_dataloader'):
        for sub in new[name].dataset.dataset.datasets:
            assert [t['type'] for t in sub.pipeline] == [
                'LoadImageFromFile', 'mmseg.LoadAnnotations', 'CheckSegMapShape',
                'PackSegInputs']
    assert with_seg_map_checks(new, ['val_dataloader']) is new  # nothing left to insert
    assert len(cfg.val_dataloader.dataset.dataset.datasets[0].pipeline) == 3  # not modified


def test_stock_cityscapes_pipeline_refuses_resized_label_map(tmp_path):
    """mmseg's own cityscapes dataset config, its train pipeline checked as the tools do: the
    resized label map is refused when its sample is loaded."""
    root = make_cityscapes(tmp_path / 'cityscapes', num_train=1, num_val=1, image_size=(64, 128))
    (label, ) = glob.glob(osp.join(root, 'gtFine', 'train', '*', '*_labelTrainIds.png'))
    Image.open(label).resize((64, 32), Image.NEAREST).save(label)
    (image, ) = glob.glob(osp.join(root, 'leftImg8bit', 'train', '*', '*.png'))
    cfg_file = tmp_path / 'config.py'
    cfg_file.write_text("_base_ = 'mmseg::_base_/datasets/cityscapes.py'\n")
    cfg = Config.fromfile(str(cfg_file))
    cfg.train_dataloader.dataset.data_root = root
    checked = with_seg_map_checks(cfg, ['train_dataloader'])

    importlib.import_module('mmseg.utils').register_all_modules(init_default_scope=False)
    from mmseg.registry import DATASETS
    with DefaultScope.overwrite_default_scope('mmseg'):
        plain = DATASETS.build(cfg.train_dataloader.dataset)
        dataset = DATASETS.build(checked.train_dataloader.dataset)
    plain[0]  # upstream: trains on the misaligned pair
    with pytest.raises(ValueError, match=re.escape(
            f'label map {label} is 32x64 (HxW) but its image {image} is 64x128')):
        dataset[0]
