"""SafeCIFAR10 / SafeCIFAR100: the official python layout, read without running code from it.

Generated files (make_cifar10 / make_cifar100) load through both registries and give back what
was written; mmpretrain's own classes refuse them (md5); a crafted batch that would run a
command under ``pickle.load`` is refused before anything runs."""
import os
import os.path as osp
import pickle
import shutil
import struct
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from mmengine.registry import DefaultScope

import mmmod  # noqa: F401  (registers SafeCIFAR10/100, as custom_imports does)
from mmmod.datasets import (EmptyDatasetError, SafeCIFAR10, SafeCIFAR100, make_cifar10,
                            make_cifar100)
from mmmod.datasets.cifar import RefusedPickleError, load_cifar_pickle
from mmmod.registry import DATASETS

CIFAR10_FOLDER, CIFAR100_FOLDER = 'cifar-10-batches-py', 'cifar-100-python'
TRAIN10 = [f'data_batch_{i}' for i in range(1, 6)]


@pytest.fixture(scope='module')
def cifar10_root(tmp_path_factory):
    return make_cifar10(tmp_path_factory.mktemp('cifar10'), num_train_per_class=3,
                        num_test_per_class=2, seed=1)


@pytest.fixture(scope='module')
def cifar100_root(tmp_path_factory):
    return make_cifar100(tmp_path_factory.mktemp('cifar100'), num_train_per_class=1,
                         num_test_per_class=1, seed=2)


def independent_read(folder, names, label_key):
    """(N, 32, 32, 3) images and N labels of ``names``, read with plain pickle (the files are
    our own) and unpacked channel by channel as the CIFAR page describes the rows."""
    images, labels = [], []
    for name in names:
        with open(osp.join(folder, name), 'rb') as f:
            entry = pickle.load(f, encoding='latin1')
        for row in entry['data']:
            r, g, b = (row[k * 1024:(k + 1) * 1024].reshape(32, 32) for k in range(3))
            images.append(np.dstack([r, g, b]))
        labels += entry[label_key]
    return np.stack(images), labels


def copy_layout(src_root, dst, folder=CIFAR10_FOLDER):
    shutil.copytree(osp.join(src_root, folder), osp.join(dst, folder))
    return osp.join(dst, folder)


def dump(entry, path):
    with open(path, 'wb') as f:
        pickle.dump(entry, f, protocol=2)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('registry', ['mmmod', 'mmpretrain'])
@pytest.mark.parametrize('type_, split, num', [('SafeCIFAR10', 'train', 30),
                                               ('SafeCIFAR10', 'test', 20),
                                               ('SafeCIFAR100', 'train', 100),
                                               ('SafeCIFAR100', 'test', 100)])
def test_loads_what_was_written(request, registry, type_, split, num):
    cifar10 = type_ == 'SafeCIFAR10'
    root = request.getfixturevalue('cifar10_root' if cifar10 else 'cifar100_root')
    cfg = dict(type=type_, data_root=root, split=split, verify_md5=False)
    if registry == 'mmmod':
        dataset = DATASETS.build(cfg)
    else:  # as a config of mmpretrain builds it, after custom_imports=['mmmod']
        from mmpretrain.registry import DATASETS as MMPRETRAIN_DATASETS
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            dataset = MMPRETRAIN_DATASETS.build(cfg)
    assert type(dataset) is (SafeCIFAR10 if cifar10 else SafeCIFAR100)
    assert len(dataset) == num
    assert len(dataset.metainfo['classes']) == (10 if cifar10 else 100)

    folder = osp.join(root, CIFAR10_FOLDER if cifar10 else CIFAR100_FOLDER)
    names = (TRAIN10 if split == 'train' else ['test_batch']) if cifar10 else [split]
    images, labels = independent_read(folder, names, 'labels' if cifar10 else 'fine_labels')
    np.testing.assert_array_equal(dataset.get_gt_labels(), labels)
    for i in range(num):
        img = dataset.get_data_info(i)['img']
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, images[i])


@pytest.mark.parametrize('safe_cls, folder', [(SafeCIFAR10, CIFAR10_FOLDER),
                                              (SafeCIFAR100, CIFAR100_FOLDER)])
def test_upstream_refuses_generated_files_but_reads_them_the_same(
        request, safe_cls, folder):
    """mmpretrain's class refuses the generated files only for their md5: with the check
    patched out it reads exactly what the safe class reads."""
    from mmpretrain.datasets import CIFAR10, CIFAR100
    upstream_cls = CIFAR10 if safe_cls is SafeCIFAR10 else CIFAR100
    root = request.getfixturevalue(
        'cifar10_root' if safe_cls is SafeCIFAR10 else 'cifar100_root')
    with pytest.raises(RuntimeError, match=f'Cannot find {upstream_cls.__name__} dataset'):
        upstream_cls(data_root=root, split='train', download=False)

    safe = safe_cls(data_root=root, split='train', verify_md5=False)
    assert isinstance(safe, upstream_cls)
    with mock.patch('mmpretrain.datasets.cifar.check_md5', return_value=True):
        upstream = upstream_cls(data_root=root, split='train', download=False)
    assert upstream.metainfo == safe.metainfo
    np.testing.assert_array_equal(upstream.get_gt_labels(), safe.get_gt_labels())
    for i in range(len(safe)):
        np.testing.assert_array_equal(upstream[i]['img'], safe[i]['img'])


def test_verify_md5_on_generated_data(cifar10_root, cifar100_root):
    with pytest.raises(ValueError, match=r'data_batch_1: md5 [0-9a-f]{32} differs from the '
                       r'official CIFAR-10 data_batch_1 \(c99cafc152244af753f735de768cd75f\)'
                       r'.*needs verify_md5=False'):
        SafeCIFAR10(data_root=cifar10_root, split='train')
    with pytest.raises(ValueError, match=r'cifar-100-python/test: md5 .* CIFAR-100 test .*'
                       r'generate_data\.py cifar100 DIR\) has other bytes'):
        DATASETS.build(dict(type='SafeCIFAR100', data_root=cifar100_root, split='test'))


def test_classes_from_meta_file(cifar100_root):
    """``metainfo=dict(classes=None)``: the names come from the (safely read) meta file."""
    from mmpretrain.datasets.categories import CIFAR100_CATEGORIES
    dataset = SafeCIFAR100(data_root=cifar100_root, split='test', verify_md5=False,
                           metainfo=dict(classes=None))
    assert dataset.metainfo['classes'] == CIFAR100_CATEGORIES


def test_data_prefix_and_pipeline(cifar10_root):
    pipeline = [dict(type='mmpretrain.RandomCrop', crop_size=32, padding=4),
                dict(type='mmpretrain.RandomFlip', prob=0.5, direction='horizontal'),
                dict(type='mmpretrain.PackInputs')]
    parent, name = osp.split(cifar10_root.rstrip('/'))
    dataset = SafeCIFAR10(data_root=parent, data_prefix=name, split='test', verify_md5=False,
                          pipeline=pipeline)
    sample = dataset[3]
    assert tuple(sample['inputs'].shape) == (3, 32, 32)
    assert int(sample['data_samples'].gt_label) == dataset.get_data_info(3)['gt_label']


def python2_batch(data, labels):
    """A batch pickled as the official files are: by Python 2 (protocol 2, str as
    SHORT_BINSTRING / BINSTRING, ``dtype('u1', 0, 1)``), assembled opcode by opcode."""
    raw = data.tobytes()
    return b''.join([
        b'\x80\x02}(',
        b'U\x04data', b'cnumpy.core.multiarray\n_reconstruct\n', b'cnumpy\nndarray\n',
        b'K\x00\x85U\x01b\x87R(K\x01', b'M' + struct.pack('<H', len(data)), b'M\x00\x0c\x86',
        b'cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R',
        b'(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb',
        b'\x89T' + struct.pack('<I', len(raw)) + raw, b'tb',
        b'U\x06labels](', b''.join(b'K' + bytes([label]) for label in labels), b'eu.'])


def test_python2_pickles_load(tmp_path):
    """The official files come from Python 2: their str typecode, str raw data and int dtype
    flags go through the stand-ins as they go through numpy."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    blob = python2_batch(data, [7, 0, 9])
    upstream = pickle.loads(blob, encoding='latin1')  # our own bytes: safe to load as upstream
    np.testing.assert_array_equal(upstream['data'], data)
    entry = load_cifar_pickle(blob, 'data_batch_1')
    assert entry.keys() == {'data', 'labels'} and entry['labels'] == [7, 0, 9]
    assert entry['data'].dtype == np.uint8 and entry['data'].flags.writeable
    np.testing.assert_array_equal(entry['data'], data)


# ---------------------------------------------------------------------------------------------
# Crafted files
# ---------------------------------------------------------------------------------------------
class RunsOnLoad:
    """Pickles as a call of ``func(*args)``: what ``pickle.load`` does when reading it."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize('attack', ['os.system', 'builtins.eval'])
def test_crafted_batch_is_refused_before_it_runs(cifar10_root, tmp_path, attack):
    folder = copy_layout(cifar10_root, tmp_path / 'data')
    marker = tmp_path / 'MARKER'
    payload = (RunsOnLoad(os.system, f'touch {marker}') if attack == 'os.system' else
               RunsOnLoad(eval, f'open({str(marker)!r}, "w").close()'))
    path = osp.join(folder, 'data_batch_1')
    dump(dict(data=payload, labels=[0]), path)

    global_name = r'(posix|os|nt)\.system' if attack == 'os.system' else r'__builtin__\.eval'
    with pytest.raises(RefusedPickleError, match=r'data_batch_1 is refused: its pickle asks for '
                       rf'the global {global_name}, which no CIFAR file holds'):
        SafeCIFAR10(data_root=str(tmp_path / 'data'), split='train', verify_md5=False)
    assert not marker.exists()

    # The file is a real attack: plain pickle.load (as upstream reads batches) runs it.
    subprocess.run([sys.executable, '-c', 'import pickle, sys; '
                    'pickle.load(open(sys.argv[1], "rb"), encoding="latin1")', path],
                   check=True, timeout=30 * 60)  # bounds a hang, not a slow run
    assert marker.exists()


def test_crafted_numpy_state_is_refused():
    """numpy's own objects would take any state: a uint8 dtype flagged as holding objects
    (then an array of it writes object pointers into 1-byte items). The stand-ins accept only
    the state numpy writes."""
    flagged = (3, '|', None, None, None, -1, -1, 0x3f)
    dtype = np.dtype('u1', False, True)
    dtype.__setstate__(flagged)
    assert dtype.hasobject  # numpy accepts it

    class FlaggedDtype:
        def __reduce__(self):
            return np.dtype, ('u1', False, True), flagged

    class ArrayOf:
        def __init__(self, dtype, state):
            self.dtype, self.state = dtype, state

        def __reduce__(self):
            return (np.ndarray.__reduce__(np.zeros(0, np.uint8))[0], (np.ndarray, (0, ), b'b'),
                    (1, (2, ), self.dtype, False, self.state))

    blob = pickle.dumps(dict(data=ArrayOf(FlaggedDtype(), [1, 2])), protocol=2)
    with pytest.raises(RefusedPickleError, match=r"x is refused: its pickle builds the state "
                       r"\(3, '\|', None, None, None, -1, -1, 63\) of numpy\.dtype\('\|u1'\) "
                       r"\(numpy writes \(3, '\|', None, None, None, -1, -1, 0\)\)"):
        load_cifar_pickle(blob, 'x')

    objects = pickle.dumps(dict(data=np.array([1, 'a'], dtype=object)), protocol=2)
    with pytest.raises(RefusedPickleError, match=r"numpy\.dtype\('O\d*', False, True\) \(valid: "
                       'bool and numeric dtypes\\)'):
        load_cifar_pickle(objects, 'x')

    short = pickle.dumps(dict(data=ArrayOf(np.dtype('u1'), b'\x00')), protocol=2)
    with pytest.raises(RefusedPickleError, match=r'an ndarray of shape \(2,\) uint8 with 1 '
                       r'bytes of data \(needs 2\)'):
        load_cifar_pickle(short, 'x')


# ---------------------------------------------------------------------------------------------
# Malformed and missing files
# ---------------------------------------------------------------------------------------------
def test_missing_files_named(cifar10_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"SafeCIFAR10 split 'train' needs data_batch_1, "
                       r'.*data_batch_5 in .*nowhere/cifar-10-batches-py, which do not exist\. '
                       r'Expected there: data_batch_1, .*, test_batch, batches\.meta .*'
                       r'cifar-10-python\.tar\.gz .*generate_data\.py cifar10 DIR'):
        SafeCIFAR10(data_root=str(tmp_path / 'nowhere'), verify_md5=False)
    folder = copy_layout(cifar10_root, tmp_path / 'data')
    os.remove(osp.join(folder, 'data_batch_3'))
    with pytest.raises(FileNotFoundError, match=r"split 'train' needs data_batch_3 in .*, which "
                       'does not exist'):
        SafeCIFAR10(data_root=str(tmp_path / 'data'), verify_md5=False)
    assert len(SafeCIFAR10(data_root=str(tmp_path / 'data'), split='test',
                           verify_md5=False)) == 20  # the test split still reads


def test_malformed_batches_named(cifar10_root, tmp_path):
    folder = copy_layout(cifar10_root, tmp_path / 'data')
    path = osp.join(folder, 'test_batch')
    with open(path, 'rb') as f:
        good = pickle.load(f, encoding='latin1')

    def refused(entry, match):
        if isinstance(entry, bytes):
            with open(path, 'wb') as f:
                f.write(entry)
        else:
            dump(entry, path)
        with pytest.raises(ValueError, match=match):
            SafeCIFAR10(data_root=str(tmp_path / 'data'), split='test', verify_md5=False)

    refused(b'not a pickle', r'test_batch is not a CIFAR python pickle: UnpicklingError')
    refused([1, 2], r'test_batch is not a CIFAR python pickle: it holds a list, not a dict')
    refused({key: value for key, value in good.items() if key != 'labels'},
            r"test_batch: a CIFAR-10 batch needs the keys 'data' and 'labels'; missing "
            r"\['labels'\]")
    refused(dict(good, data=good['data'][:, :1024]),
            r"test_batch: 'data' must be a uint8 array \(N, 3072\) .*got uint8 \(20, 1024\)")
    refused(dict(good, data=good['data'].astype(np.float32)),
            r"'data' must be a uint8 array .*got float32 \(20, 3072\)")
    refused(dict(good, labels=good['labels'][:-1]),
            r"'labels' must be a list of 20 ints \(one per row of data\), got 19 items")
    refused(dict(good, labels=[10] + good['labels'][1:]),
            r'test_batch: CIFAR-10 labels are 0\.\.9, got 0\.\.10')


def test_malformed_meta_named(cifar100_root, tmp_path):
    folder = copy_layout(cifar100_root, tmp_path / 'data', CIFAR100_FOLDER)
    dump(dict(fine_label_names=['apple'] * 99), osp.join(folder, 'meta'))
    with pytest.raises(ValueError, match=r"meta: 'fine_label_names' must be a list of 100 class "
                       'names'):
        SafeCIFAR100(data_root=str(tmp_path / 'data'), split='test', verify_md5=False,
                     metainfo=dict(classes=None))
    # with the classes given (the default), the meta file is not read, as upstream
    assert len(SafeCIFAR100(data_root=str(tmp_path / 'data'), split='test',
                            verify_md5=False)) == 100


def test_empty_split_raises(cifar10_root, tmp_path):
    folder = copy_layout(cifar10_root, tmp_path / 'data')
    for name in TRAIN10:
        dump(dict(data=np.zeros((0, 3072), np.uint8), labels=[]), osp.join(folder, name))
    with pytest.raises(EmptyDatasetError, match=r"SafeCIFAR10 split 'train' has no images: "
                       r'data_batch_1, .*data_batch_5 in .* hold 0 rows of data'):
        SafeCIFAR10(data_root=str(tmp_path / 'data'), split='train', verify_md5=False)


def test_arguments_refused():
    with pytest.raises(ValueError, match=r'SafeCIFAR10 does not download \(download=True\): get '
                       r'https://www\.cs\.toronto\.edu/~kriz/cifar-10-python\.tar\.gz'):
        SafeCIFAR10(data_root='data/cifar10', download=True)
    with pytest.raises(ValueError, match=r'cifar-100-python\.tar\.gz .*generate_data\.py '
                       'cifar100 DIR'):
        SafeCIFAR100(data_root='data/cifar100', download=True)
    with pytest.raises(ValueError, match=r"SafeCIFAR100 split must be one of \['test', 'train'\]"
                       r", got 'val'"):
        SafeCIFAR100(data_root='.', split='val')
