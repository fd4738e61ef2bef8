"""SVHN from the official .mat layout, written by make_svhn."""
import numpy as np
import pytest
from scipy.io import loadmat, savemat

from mmmod.datasets import SVHN, make_svhn
from mmmod.registry import DATASETS


@pytest.fixture(scope='module')
def svhn_root(tmp_path_factory):
    return make_svhn(tmp_path_factory.mktemp('svhn'), num_images=(12, 5, 7))


def test_files_in_official_format(svhn_root):
    mat = loadmat(f'{svhn_root}/train_32x32.mat')
    assert mat['X'].shape == (32, 32, 3, 12) and mat['X'].dtype == np.uint8
    assert mat['y'].shape == (12, 1)
    assert set(mat['y'].ravel()) == set(range(1, 11))  # 10 stands for the digit 0


@pytest.mark.parametrize('split, num', [('train', 12), ('test', 5), ('extra', 7),
                                        ('train+extra', 19)])
def test_splits(svhn_root, split, num):
    data = DATASETS.build(dict(type='SVHN', data_root=svhn_root, split=split))
    assert len(data) == num
    assert data[0]['img'].shape == (32, 32, 3) and data[0]['img'].dtype == np.uint8
    mat = loadmat(f'{svhn_root}/{split.split("+")[0]}_32x32.mat')
    np.testing.assert_array_equal(data.get_gt_labels()[:len(mat['y'])], mat['y'].ravel() % 10)
    np.testing.assert_array_equal(data[1]['img'], mat['X'][..., 1])


def test_cifar_pipeline_runs(svhn_root):
    pipeline = [dict(type='mmpretrain.RandomCrop', crop_size=32, padding=4),
                dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
                dict(type='mmpretrain.PackInputs')]
    sample = SVHN(data_root=svhn_root, split='test', pipeline=pipeline)[3]
    assert tuple(sample['inputs'].shape) == (3, 32, 32)
    assert int(sample['data_samples'].gt_label) == 3


def test_missing_file_named(tmp_path):
    make_svhn(tmp_path, num_images=2)
    (tmp_path / 'extra_32x32.mat').unlink()
    with pytest.raises(FileNotFoundError, match=r"split 'train\+extra' needs .*extra_32x32\.mat"
                       r".*generate_data\.py svhn"):
        SVHN(data_root=str(tmp_path), split='train+extra')
    assert len(SVHN(data_root=str(tmp_path), split='train')) == 2  # the rest still reads


def test_malformed_files_named(tmp_path):
    (tmp_path / 'train_32x32.mat').write_bytes(b'not a mat file')
    with pytest.raises(ValueError, match=r'train_32x32\.mat is not an SVHN \.mat file'):
        SVHN(data_root=str(tmp_path), split='train')
    savemat(tmp_path / 'test_32x32.mat', dict(X=np.zeros((28, 28, 3, 2), np.uint8),
                                              y=np.ones((2, 1), np.uint8)))
    with pytest.raises(ValueError, match=r'X must be \(32, 32, 3, N\)'):
        SVHN(data_root=str(tmp_path), split='test')
    savemat(tmp_path / 'extra_32x32.mat', dict(X=np.zeros((32, 32, 3, 2), np.uint8),
                                               y=np.zeros((2, 1), np.uint8)))
    with pytest.raises(ValueError, match=r'labels are 1\.\.10'):
        SVHN(data_root=str(tmp_path), split='extra')


def test_unknown_split():
    with pytest.raises(ValueError, match=r"split must be one of \['extra', 'test', 'train', "
                       r"'train\+extra'\], got 'val'"):
        SVHN(data_root='.', split='val')
