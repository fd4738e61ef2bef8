"""The generated datasets load with the real dataset classes of mmpretrain, mmseg and mmdet."""
import collections
import importlib
import os
import os.path as osp
import pickle
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from mmengine.registry import DefaultScope
from PIL import Image

from mmmod.datasets import (make_cifar10, make_cifar100, make_cityscapes, make_imagenet,
                            make_svhn, make_voc)

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# Independent ground truth, from the ILSVRC-2012 synset list and cityscapesscripts' labels.py.
IMAGENET_LABELS = {'n01440764': (0, 'tench'), 'n01443537': (1, 'goldfish'),
                   'n01484850': (2, 'great white shark')}
CITYSCAPES_LABEL_IDS = {0: 7, 2: 11, 10: 23, 13: 26, 255: 1}  # train id -> label id (road,
# building, sky, car, ignore -> ego vehicle)


def build_dataset(scope, cfg):
    """Build ``cfg`` with the ``DATASETS`` registry of ``scope``, as a config of that library
    would, so ``type`` and the pipeline's transforms resolve as they do in training."""
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    registry = importlib.import_module(f'{scope}.registry').DATASETS
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(cfg)


def read_tree(root):
    """``{relative path: bytes}`` of every file under ``root``."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                files[osp.relpath(path, root)] = f.read()
    return files


# ---------------------------------------------------------------------------------------------
# ImageNet
# ---------------------------------------------------------------------------------------------
IMAGENET_SIZE = (48, 40)  # (H, W), not square: a swapped H/W shows up


@pytest.fixture(scope='module')
def imagenet_root(tmp_path_factory):
    return make_imagenet(tmp_path_factory.mktemp('imagenet'), num_classes=3,
                         num_train_per_class=3, num_val_per_class=2, image_size=IMAGENET_SIZE,
                         seed=1)


def imagenet(root, split):
    return build_dataset('mmpretrain', dict(
        type='ImageNet', data_root=root, split=split,
        pipeline=[dict(type='LoadImageFromFile')]))


def test_imagenet_train_split(imagenet_root):
    dataset = imagenet(imagenet_root, 'train')
    assert len(dataset) == 3 * 3
    # The full ImageNet-1k class list is kept, and labels index into it.
    assert len(dataset.metainfo['classes']) == 1000
    labels = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        wnid = osp.basename(osp.dirname(info['img_path']))
        label, name = IMAGENET_LABELS[wnid]
        assert info['gt_label'] == label
        assert dataset.metainfo['classes'][label].split(',')[0] == name
        assert info['img_path'].startswith(osp.join(imagenet_root, 'train', wnid))
        assert info['img_path'].endswith('.JPEG')
        labels.append(label)
    assert collections.Counter(labels) == {0: 3, 1: 3, 2: 3}

    img = dataset[0]['img']
    assert img.shape == (*IMAGENET_SIZE, 3) and img.dtype == np.uint8
    with open(dataset.get_data_info(0)['img_path'], 'rb') as f:
        assert f.read(2) == b'\xff\xd8'  # a JPEG, not a PNG named .JPEG


def test_imagenet_val_split(imagenet_root):
    dataset = imagenet(imagenet_root, 'val')
    assert len(dataset) == 3 * 2
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    # Flat folder: the labels can only have come from meta/val.txt.
    assert {osp.dirname(info['img_path']) for info in infos} == {osp.join(imagenet_root, 'val')}
    assert collections.Counter(info['gt_label'] for info in infos) == {0: 2, 1: 2, 2: 2}
    for i in range(len(dataset)):
        assert dataset[i]['img'].shape == (*IMAGENET_SIZE, 3)


def test_imagenet_classes_are_separable(imagenet_root):
    """Nearest class mean of the mean colour classifies every val image: there is signal."""
    train, val = imagenet(imagenet_root, 'train'), imagenet(imagenet_root, 'val')

    def features(dataset):
        items = [dataset[i] for i in range(len(dataset))]
        return (np.stack([it['img'].reshape(-1, 3).mean(0) for it in items]),  # (N, 3)
                np.array([it['gt_label'] for it in items]))  # (N,)

    x_train, y_train = features(train)
    x_val, y_val = features(val)
    means = np.stack([x_train[y_train == c].mean(0) for c in range(3)])  # (3, 3)
    dist = ((x_val[:, None] - means[None]) ** 2).sum(-1)  # (N_val, 3)
    assert (dist.argmin(1) == y_val).all()


def test_imagenet_rejects_unknown_classes(tmp_path):
    with pytest.raises(ValueError, match=r'num_classes must be in \[1, 10\]'):
        make_imagenet(tmp_path, num_classes=11)


# ---------------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------------
CITYSCAPES_SIZE = (64, 96)


@pytest.fixture(scope='module')
def cityscapes_root(tmp_path_factory):
    return make_cityscapes(tmp_path_factory.mktemp('cityscapes'), num_train=3, num_val=2,
                           image_size=CITYSCAPES_SIZE, seed=2)


def cityscapes(root, split):
    # As in mmseg's configs/_base_/datasets/cityscapes.py.
    return build_dataset('mmseg', dict(
        type='CityscapesDataset', data_root=root,
        data_prefix=dict(img_path=f'leftImg8bit/{split}', seg_map_path=f'gtFine/{split}'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]))


@pytest.mark.parametrize('split,num', [('train', 3), ('val', 2)])
def test_cityscapes_loads(cityscapes_root, split, num):
    dataset = cityscapes(cityscapes_root, split)
    assert len(dataset) == num
    assert len(dataset.metainfo['classes']) == 19
    valid = set(range(19)) | {255}
    for i in range(num):
        item = dataset[i]
        img_path, seg_path = item['img_path'], item['seg_map_path']
        city = osp.basename(osp.dirname(img_path))
        assert osp.dirname(img_path) == osp.join(cityscapes_root, 'leftImg8bit', split, city)
        assert osp.basename(img_path).startswith(f'{city}_000000_')
        assert seg_path == img_path.replace('leftImg8bit', 'gtFine', 1).replace(
            '_leftImg8bit.png', '_gtFine_labelTrainIds.png')
        assert item['img'].shape == (*CITYSCAPES_SIZE, 3)
        seg = item['gt_seg_map']
        assert seg.shape == CITYSCAPES_SIZE and seg.dtype == np.uint8
        values = set(np.unique(seg).tolist())
        assert values <= valid
        assert 255 in values and len(values - {255}) >= 4  # a scene, with an ignore region


def test_cityscapes_label_ids_match_train_ids(cityscapes_root):
    """``*_gtFine_labelIds.png`` (read by CityscapesMetric) agrees with the train ids."""
    dataset = cityscapes(cityscapes_root, 'val')
    for i in range(len(dataset)):
        seg_path = dataset.get_data_info(i)['seg_map_path']
        train_ids = np.asarray(Image.open(seg_path))
        label_ids = np.asarray(Image.open(seg_path.replace('labelTrainIds', 'labelIds')))
        assert label_ids.shape == train_ids.shape
        for train_id in (0, 10, 255):  # road, sky and the hood are in every scene
            assert (train_ids == train_id).any()
        for train_id, label_id in CITYSCAPES_LABEL_IDS.items():
            assert (label_ids[train_ids == train_id] == label_id).all()


# ---------------------------------------------------------------------------------------------
# Pascal VOC
# ---------------------------------------------------------------------------------------------
VOC_SIZE = (120, 160)


@pytest.fixture(scope='module')
def voc_root(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp('voc'), num_trainval=3, num_test=2,
                    image_size=VOC_SIZE, seed=3)


def voc(root, year, split):
    # As in mmdet's configs/_base_/datasets/voc0712.py.
    return build_dataset('mmdet', dict(
        type='VOCDataset', data_root=root, ann_file=f'VOC{year}/ImageSets/Main/{split}.txt',
        data_prefix=dict(sub_data_root=f'VOC{year}/'), test_mode=split == 'test',
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations', with_bbox=True)]))


def test_voc_returns_devkit(voc_root):
    assert osp.basename(voc_root) == 'VOCdevkit'
    assert sorted(os.listdir(voc_root)) == ['VOC2007', 'VOC2012']


@pytest.mark.parametrize('year,split,num', [('2007', 'trainval', 3), ('2007', 'test', 2),
                                            ('2012', 'trainval', 3)])
def test_voc_loads(voc_root, year, split, num):
    dataset = voc(voc_root, year, split)
    assert len(dataset) == num
    assert dataset.metainfo['dataset_type'] == f'VOC{year}'
    classes = dataset.metainfo['classes']
    h, w = VOC_SIZE
    for i in range(num):
        item = dataset[i]
        assert item['img'].shape == (h, w, 3)
        assert (item['height'], item['width']) == (h, w)  # from the XML's <size>
        boxes = item['gt_bboxes'].tensor.numpy()  # (K, 4) x1, y1, x2, y2, 0-based
        labels = item['gt_bboxes_labels']
        assert len(boxes) >= 1 and not item['gt_ignore_flags'].any()  # difficult=0
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w - 1).all() and (boxes[:, 3] <= h - 1).all()
        assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
        # The loaded labels are the classes named in the XML, in order.
        names = [obj.find('name').text for obj in ET.parse(item['xml_path']).findall('object')]
        assert labels.tolist() == [classes.index(name) for name in names]
        # The box drawn last is on top: its 2-pixel black outline lies exactly on the box's
        # edges (checks VOC's 1-based coordinates), and its inside is one flat colour.
        img = item['img'].astype(int)
        x1, y1, x2, y2 = boxes[-1].astype(int)
        xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
        for y, x in ((yc, x1), (yc, x2), (y1, xc), (y2, xc)):
            assert img[y, x].max() < 50, (y, x, img[y, x])
        inside = img[y1 + 4:y2 - 3, x1 + 4:x2 - 3].reshape(-1, 3)
        assert inside.std(0).max() < 6 < img.reshape(-1, 3).std(0).max()


def test_voc_splits_are_disjoint(voc_root):
    def ids(year, split):
        with open(osp.join(voc_root, f'VOC{year}', 'ImageSets', 'Main', f'{split}.txt')) as f:
            return f.read().split()

    trainval, test = ids('2007', 'trainval'), ids('2007', 'test')
    assert len(set(trainval + test)) == len(trainval) + len(test) == 5
    assert all(i.startswith('2012_') for i in ids('2012', 'trainval'))
    assert not osp.exists(osp.join(voc_root, 'VOC2012', 'ImageSets', 'Main', 'test.txt'))


# ---------------------------------------------------------------------------------------------
# Determinism and the command line
# ---------------------------------------------------------------------------------------------
SMALL = {
    make_imagenet: dict(num_classes=2, num_train_per_class=1, num_val_per_class=1),
    make_cityscapes: dict(num_train=1, num_val=1, image_size=(32, 64)),
    make_voc: dict(num_trainval=1, num_test=1, image_size=(48, 64)),
    make_svhn: dict(num_images=2),
}


@pytest.mark.parametrize('make', list(SMALL), ids=lambda f: f.__name__)
def test_same_seed_same_bytes(tmp_path, make):
    trees = [read_tree(make(tmp_path / name, seed=seed, **SMALL[make]))
             for name, seed in (('a', 5), ('b', 5), ('c', 6))]
    assert trees[0] == trees[1]
    assert trees[0].keys() == trees[2].keys()
    images = [k for k in trees[0] if k.endswith(('.JPEG', '.jpg', '_leftImg8bit.png', '.mat'))]
    assert images and all(trees[0][k] != trees[2][k] for k in images)


def test_cli_writes_dataset(tmp_path):
    out = subprocess.run(
        [sys.executable, osp.join('tools', 'misc', 'generate_data.py'), 'voc', str(tmp_path),
         '--seed', '1'], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        timeout=30 * 60).stdout  # bounds a hang, not a slow run
    devkit = osp.join(str(tmp_path), 'VOCdevkit')
    assert repr(devkit) in out
    assert 'VOC2007/JPEGImages/: 6 files' in out  # 4 trainval + 2 test by default
    assert osp.isfile(osp.join(devkit, 'VOC2007', 'ImageSets', 'Main', 'test.txt'))


def test_cli_writes_svhn(tmp_path):
    out = subprocess.run(
        [sys.executable, osp.join('tools', 'misc', 'generate_data.py'), 'svhn', str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=30 * 60).stdout
    assert './: 3 files' in out
    assert {p.name for p in tmp_path.iterdir()} == {f'{s}_32x32.mat'
                                                    for s in ('train', 'test', 'extra')}


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# ---------------------------------------------------------------------------------------------
def read_pickle(path):
    with open(path, 'rb') as f:
        assert f.read(2) == b'\x80\x02'  # protocol 2, as the official files
        f.seek(0)
        return pickle.load(f, encoding='latin1')  # as mmpretrain reads them (our own files)


def test_cifar10_official_layout(tmp_path):
    from mmpretrain.datasets.categories import CIFAR10_CATEGORIES
    root = make_cifar10(tmp_path, num_train_per_class=3, num_test_per_class=2)
    folder = osp.join(root, 'cifar-10-batches-py')
    batches = [f'data_batch_{i}' for i in range(1, 6)]
    assert sorted(os.listdir(folder)) == sorted(batches + ['test_batch', 'batches.meta'])
    labels = []
    for i, name in enumerate(batches, start=1):
        entry = read_pickle(osp.join(folder, name))
        assert entry.keys() == {'batch_label', 'labels', 'data', 'filenames'}
        assert entry['batch_label'] == f'training batch {i} of 5'
        assert entry['data'].dtype == np.uint8 and entry['data'].shape == (6, 3072)
        assert len(entry['labels']) == len(entry['filenames']) == 6
        assert all(type(label) is int for label in entry['labels'])
        labels += entry['labels']
    assert collections.Counter(labels) == {c: 3 for c in range(10)}
    test = read_pickle(osp.join(folder, 'test_batch'))
    assert test['batch_label'] == 'testing batch 1 of 1' and test['data'].shape == (20, 3072)
    assert collections.Counter(test['labels']) == {c: 2 for c in range(10)}
    meta = read_pickle(osp.join(folder, 'batches.meta'))
    assert meta == dict(num_cases_per_batch=6, label_names=list(CIFAR10_CATEGORIES),
                        num_vis=3072)


def test_cifar100_official_layout(tmp_path):
    from mmpretrain.datasets.categories import CIFAR100_CATEGORIES
    root = make_cifar100(tmp_path, num_train_per_class=2, num_test_per_class=1)
    folder = osp.join(root, 'cifar-100-python')
    assert sorted(os.listdir(folder)) == ['meta', 'test', 'train']
    meta = read_pickle(osp.join(folder, 'meta'))
    assert meta.keys() == {'fine_label_names', 'coarse_label_names'}
    assert meta['fine_label_names'] == list(CIFAR100_CATEGORIES)
    coarse_names = meta['coarse_label_names']
    assert len(coarse_names) == 20 and coarse_names[0] == 'aquatic_mammals'
    for name, num in (('train', 200), ('test', 100)):
        entry = read_pickle(osp.join(folder, name))
        assert entry.keys() == {'filenames', 'batch_label', 'fine_labels', 'coarse_labels',
                                'data'}
        assert entry['data'].dtype == np.uint8 and entry['data'].shape == (num, 3072)
        assert collections.Counter(entry['fine_labels']) == {c: num // 100 for c in range(100)}
        # every superclass has five fine classes, and a few known ones (CIFAR's page)
        pairs = set(zip(entry['fine_labels'], entry['coarse_labels']))
        assert len(pairs) == 100
        assert collections.Counter(coarse for _, coarse in pairs) == {c: 5 for c in range(20)}
        fine = {CIFAR100_CATEGORIES[f]: coarse_names[c] for f, c in pairs}
        assert fine['beaver'] == fine['whale'] == 'aquatic_mammals'
        assert fine['maple_tree'] == 'trees' and fine['tractor'] == 'vehicles_2'


def test_cifar10_classes_are_separable(tmp_path):
    """Nearest class mean of the mean colour classifies every test image: there is signal."""
    folder = osp.join(make_cifar10(tmp_path, num_train_per_class=4), 'cifar-10-batches-py')

    def features(names):
        entries = [read_pickle(osp.join(folder, name)) for name in names]
        rows = np.concatenate([e['data'] for e in entries]).astype(float)  # (N, 3072)
        return (rows.reshape(len(rows), 3, -1).mean(-1),  # (N, 3) mean R, G, B
                np.array(sum((e['labels'] for e in entries), [])))

    x_train, y_train = features([f'data_batch_{i}' for i in range(1, 6)])
    x_test, y_test = features(['test_batch'])
    means = np.stack([x_train[y_train == c].mean(0) for c in range(10)])  # (10, 3)
    assert (((x_test[:, None] - means[None]) ** 2).sum(-1).argmin(1) == y_test).all()


@pytest.mark.parametrize('make', [make_cifar10, make_cifar100], ids=lambda f: f.__name__)
def test_cifar_same_seed_same_bytes(tmp_path, make):
    trees = [read_tree(make(tmp_path / name, num_train_per_class=1, seed=seed))
             for name, seed in (('a', 5), ('b', 5), ('c', 6))]
    assert trees[0] == trees[1]
    assert trees[0].keys() == trees[2].keys()
    batches = [k for k in trees[0] if not k.endswith('meta')]
    assert batches and all(trees[0][k] != trees[2][k] for k in batches)


def test_cifar_rejects_no_images(tmp_path):
    with pytest.raises(ValueError, match=r'num_train_per_class and num_test_per_class must be '
                       r'>= 1, got 0 and 2'):
        make_cifar10(tmp_path, num_train_per_class=0)


@pytest.mark.parametrize('name, folder, files', [
    ('cifar10', 'cifar-10-batches-py', 7), ('cifar100', 'cifar-100-python', 3)])
def test_cli_writes_cifar(tmp_path, name, folder, files):
    out = subprocess.run(
        [sys.executable, osp.join('tools', 'misc', 'generate_data.py'), name, str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=30 * 60).stdout
    assert repr(str(tmp_path)) in out
    assert f'{folder}/: {files} files' in out
    assert os.listdir(tmp_path) == [folder]
