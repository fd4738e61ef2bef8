"""check_dataset_paths: a clear FileNotFoundError for missing data, silence for present data.
check_datasets_not_empty: a clear EmptyDatasetError for datasets without samples, in the real
dataset classes' formats."""
import glob
import importlib
import os
import os.path as osp
import re
import shutil

import pytest
from mmengine import Config
from mmengine.registry import DefaultScope

from mmmod.datasets import (EmptyDatasetError, check_dataset_paths, check_datasets_not_empty,
                            make_cityscapes, make_imagenet, make_voc)


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


# -- empty datasets ---------------------------------------------------------------------------
def check_not_empty_in(scope, dataset_cfg, where):
    """``check_datasets_not_empty`` under ``scope``'s registries, as inside that library's
    Runner."""
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(scope):
        check_datasets_not_empty(dataset_cfg, where)


def test_imagenet_with_empty_ann_file(tmp_path):
    root = make_imagenet(tmp_path / 'imagenet', num_classes=2, num_train_per_class=1,
                         num_val_per_class=1)
    ann_file = osp.join(root, 'meta', 'train.txt')
    open(ann_file, 'w').close()
    dataset = dict(type='ImageNet', data_root=root, split='train')
    with pytest.raises(EmptyDatasetError, match=re.escape(
            f'ImageNet at train_dataloader.dataset is empty: ann_file {ann_file} lists no '
            'samples')) as e:
        check_not_empty_in('mmpretrain', dataset, 'train_dataloader.dataset')
    assert 'Expected on-disk layout of ImageNet' in str(e.value)
    assert f'python tools/misc/generate_data.py imagenet {root}' in str(e.value)
    # the val split next to it is fine
    check_not_empty_in('mmpretrain', dict(dataset, split='val'), 'val_dataloader.dataset')


@pytest.mark.parametrize('type_name', ['ImageNet', 'CustomDataset'])
def test_empty_class_folder_without_ann_file(tmp_path, type_name):
    """Folder scanning: ImageNet asserts 0 folders != 1000 classes, CustomDataset says "Found 0
    files"; both are reported as the empty folder they are."""
    root = make_imagenet(tmp_path / 'imagenet', num_classes=2, num_train_per_class=1,
                         num_val_per_class=1)
    shutil.rmtree(osp.join(root, 'meta'))
    shutil.rmtree(osp.join(root, 'train'))
    os.makedirs(osp.join(root, 'train', 'n01440764'))  # a class folder, no images
    dataset = dict(type=type_name, data_root=root, data_prefix='train')
    with pytest.raises(EmptyDatasetError, match=re.escape(
            f'{type_name} at d is empty: data_prefix.img_path {osp.join(root, "train")} holds '
            'no files')):
        check_not_empty_in('mmpretrain', dataset, 'd')


def test_custom_dataset_with_blank_ann_file(tmp_path):
    """Blank lines: CustomDataset fails to split them into (file, label); the file is empty."""
    root = make_imagenet(tmp_path / 'imagenet', num_classes=1, num_train_per_class=1,
                         num_val_per_class=1)
    with open(osp.join(root, 'meta', 'train.txt'), 'w') as f:
        f.write('\n  \n')
    dataset = dict(type='CustomDataset', data_root=root, data_prefix='train',
                   ann_file='meta/train.txt')
    with pytest.raises(EmptyDatasetError, match=re.escape(
            f'CustomDataset at d is empty: ann_file {osp.join(root, "meta/train.txt")} is empty')):
        check_not_empty_in('mmpretrain', dataset, 'd')


def test_cityscapes_without_images(tmp_path):
    root = make_cityscapes(tmp_path / 'cityscapes', num_train=2, num_val=1)
    images = glob.glob(osp.join(root, 'leftImg8bit', 'train', '*', '*.png'))
    assert images
    for path in images:
        os.remove(path)
    dataset = dict(type='CityscapesDataset', data_root=root,
                   data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'))
    folder = osp.join(root, 'leftImg8bit/train')
    with pytest.raises(EmptyDatasetError, match=re.escape(
            f'CityscapesDataset at d is empty: data_prefix.img_path {folder} holds no files')) \
            as e:
        check_not_empty_in('mmseg', dataset, 'd')
    assert 'seg_map_path' not in str(e.value).splitlines()[0]  # the label maps are there


def test_cityscapes_images_of_another_suffix(tmp_path):
    root = make_cityscapes(tmp_path / 'cityscapes', num_train=1, num_val=1)
    for path in glob.glob(osp.join(root, 'leftImg8bit', 'train', '*', '*.png')):
        os.rename(path, path.replace('_leftImg8bit.png', '.png'))
    dataset = dict(type='CityscapesDataset', data_root=root,
                   data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'))
    with pytest.raises(EmptyDatasetError,
                       match=re.escape('give no file the dataset reads (it reads '
                                       '*_leftImg8bit.png)')):
        check_not_empty_in('mmseg', dataset, 'd')


def test_voc_with_empty_image_set_inside_wrappers(tmp_path):
    data_root = make_voc(tmp_path, num_trainval=1, num_test=1)
    ann_file = osp.join(data_root, 'VOC2007/ImageSets/Main/trainval.txt')
    open(ann_file, 'w').close()
    dataset = voc0712(data_root).train_dataloader.dataset
    with pytest.raises(EmptyDatasetError, match=re.escape(
            'VOCDataset at train_dataloader.dataset.dataset.datasets[0] is empty: '
            f'ann_file {ann_file} lists no samples')) as e:
        check_not_empty_in('mmdet', dataset, 'train_dataloader.dataset')
    assert 'datasets[1]' not in str(e.value)  # VOC2012 has its image
    assert 'Expected on-disk layout of VOCDataset' in str(e.value)


def test_voc_whose_filter_removes_every_image(tmp_path):
    data_root = make_voc(tmp_path, num_trainval=2, num_test=1, years=('2007', ),
                         image_size=(200, 300))
    dataset = dict(type='VOCDataset', data_root=data_root,
                   ann_file='VOC2007/ImageSets/Main/trainval.txt',
                   data_prefix=dict(sub_data_root='VOC2007/'),
                   filter_cfg=dict(filter_empty_gt=True, min_size=1000))  # > any image side
    with pytest.raises(EmptyDatasetError, match=r"filter_cfg=\{.*'min_size': 1000.*\} removed "
                       r'all 2 samples read from ann_file .*trainval.txt'):
        check_not_empty_in('mmdet', dataset, 'd')


def test_datasets_with_samples_pass(tmp_path):
    root = make_imagenet(tmp_path / 'imagenet', num_classes=1, num_train_per_class=1,
                         num_val_per_class=1)
    check_not_empty_in('mmpretrain', dict(type='ImageNet', data_root=root, split='train'), 'd')
