"""check_dataset_paths: a clear FileNotFoundError for missing data, silence for present data."""
import os.path as osp
import re
import shutil

import pytest
from mmengine import Config

from mmmod.datasets import check_dataset_paths, make_cityscapes, make_imagenet, make_voc


def set_data_root(node, data_root):
    """Point every ``data_root`` in a (nested) config at ``data_root``, in place."""
    if isinstance(node, dict):
        if 'data_root' in node:
            node['data_root'] = data_root
        for value in node.values():
            set_data_root(value, data_root)
    elif isinstance(node, (list, tuple)):
        for value in node:
            set_data_root(value, data_root)


def voc0712(data_root):
    """The dataset part of mmdet's ``voc0712.py``: a RepeatDataset over a ConcatDataset."""
    def voc(year, split):
        return dict(type='VOCDataset', data_root=data_root,
                    ann_file=f'VOC{year}/ImageSets/Main/{split}.txt',
                    data_prefix=dict(sub_data_root=f'VOC{year}/'))

    return Config(dict(
        train_dataloader=dict(dataset=dict(
            type='RepeatDataset', times=3,
            dataset=dict(type='ConcatDataset', datasets=[voc('2007', 'trainval'),
                                                         voc('2012', 'trainval')]))),
        val_dataloader=dict(dataset=voc('2007', 'test')),
        test_dataloader=None))


def test_missing_imagenet_root(tmp_path):
    root = str(tmp_path / 'imagenet')
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='mmpretrain.ImageNet', data_root=root, split='train'))))
    with pytest.raises(FileNotFoundError, match=re.escape(f'data_root not found: {root}')) as e:
        check_dataset_paths(cfg)
    msg = str(e.value)
    assert 'ImageNet at train_dataloader.dataset' in msg
    for layout_word in ('train/n01440764/', 'meta/', 'val.txt'):
        assert layout_word in msg
    assert f'python tools/misc/generate_data.py imagenet {root}' in msg


def test_missing_imagenet_split_folder(tmp_path):
    root = make_imagenet(tmp_path / 'imagenet', num_classes=1, num_train_per_class=1,
                         num_val_per_class=1)
    shutil.rmtree(osp.join(root, 'val'))
    loader = dict(dataset=dict(type='ImageNet', data_root=root, split='val'))
    cfg = Config(dict(val_dataloader=loader, test_dataloader=loader))
    missing = osp.join(root, 'val')
    with pytest.raises(FileNotFoundError, match=re.escape(f'data_prefix not found: {missing}')) \
            as e:
        check_dataset_paths(cfg)
    # val and test share the dataset: one line names both places.
    assert 'ImageNet at val_dataloader.dataset, test_dataloader.dataset:' in str(e.value)


def test_missing_voc2012_inside_wrappers(tmp_path):
    data_root = make_voc(tmp_path, num_trainval=1, num_test=1, years=('2007', ))
    with pytest.raises(FileNotFoundError,
                       match=re.escape(osp.join(data_root, 'VOC2012/ImageSets/Main/trainval.txt'))
                       ) as e:
        check_dataset_paths(voc0712(data_root))
    msg = str(e.value)
    assert 'VOCDataset at train_dataloader.dataset.dataset.datasets[1]: ann_file' in msg
    assert 'datasets[0]' not in msg and 'val_dataloader' not in msg  # those exist
    for layout_word in ('VOCdevkit', 'JPEGImages', 'Annotations', 'ImageSets/Main'):
        assert layout_word in msg
    # make_voc(OUT_DIR) writes OUT_DIR/VOCdevkit, so the hint names the devkit's parent.
    assert f'python tools/misc/generate_data.py voc {tmp_path}\n' in msg + '\n'


def test_missing_cityscapes_annotations(tmp_path):
    root = make_cityscapes(tmp_path / 'cityscapes', num_train=1, num_val=1)
    shutil.rmtree(osp.join(root, 'gtFine'))
    cfg = Config(dict(val_dataloader=dict(dataset=dict(
        type='CityscapesDataset', data_root=root,
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val')))))
    missing = osp.join(root, 'gtFine/val')
    with pytest.raises(FileNotFoundError,
                       match=re.escape(f'data_prefix.seg_map_path not found: {missing}')) as e:
        check_dataset_paths(cfg)
    for layout_word in ('leftImg8bit/{train,val}/<city>/', '_gtFine_labelTrainIds.png',
                        'tools/dataset_converters/cityscapes.py',
                        'generate_data.py cityscapes'):
        assert layout_word in str(e.value)


def test_unknown_type_gets_generic_hint(tmp_path):
    root = str(tmp_path / 'coco')
    cfg = Config(dict(test_dataloader=dict(dataset=dict(
        type='CocoDataset', data_root=root, ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/')))))
    with pytest.raises(FileNotFoundError, match=re.escape(root)) as e:
        check_dataset_paths(cfg)
    msg = str(e.value)
    assert 'Expected on-disk layout of CocoDataset' in msg and 'ann_file' in msg
    assert 'tools/misc/generate_data.py --help' in msg


def test_remote_and_absent_loaders_are_skipped():
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(type='ImageNet', data_root='s3://bucket/imagenet',
                                           split='train')),
        val_dataloader=None))
    assert check_dataset_paths(cfg) == []


@pytest.mark.parametrize('base,make,expected', [
    ('mmpretrain::_base_/datasets/imagenet_bs32.py', make_imagenet,
     ['train', 'val']),
    ('mmseg::_base_/datasets/cityscapes.py', make_cityscapes,
     ['leftImg8bit/train', 'gtFine/train', 'leftImg8bit/val', 'gtFine/val']),
    ('mmdet::_base_/datasets/voc0712.py', make_voc,
     ['VOC2007/ImageSets/Main/trainval.txt', 'VOC2007/', 'VOC2012/ImageSets/Main/trainval.txt',
      'VOC2012/', 'VOC2007/ImageSets/Main/test.txt']),
], ids=['imagenet', 'cityscapes', 'voc'])
def test_generated_data_passes_upstream_configs(tmp_path, base, make, expected):
    """The libraries' own dataset configs, pointed at generated data, find every path."""
    data_root = make(tmp_path / 'data')
    cfg_file = tmp_path / 'config.py'
    cfg_file.write_text(f'_base_ = {base!r}\n')
    cfg = Config.fromfile(str(cfg_file))
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        set_data_root(cfg.get(key), data_root)
    found = check_dataset_paths(cfg)
    for path in expected:
        assert osp.join(data_root, path) in found
