"""CIFAR-10 and CIFAR-100 from the official python pickles, read without running code from them.

mmpretrain's ``CIFAR10`` / ``CIFAR100`` read the batch files with ``pickle.loads``, so a crafted
``data_batch_1`` runs whatever it names on load, and they md5-check every file against the
official archive, so a demo set in the real format (``tools/misc/generate_data.py cifar10``)
is refused. :class:`SafeCIFAR10` and :class:`SafeCIFAR100` are those classes (same arguments,
classes, folder layout and file lists) with the loading replaced:

- every file is read once; its md5 is checked on those bytes (``verify_md5=True``, the default,
  keeps the corruption check for real data) and the same bytes are unpickled;
- the unpickler (:class:`CIFARUnpickler`) resolves only the names a CIFAR pickle holds, from
  the constant :data:`CIFAR_GLOBALS` (no file can extend it): numpy's array reconstruction for
  numeric dtypes, and the two helpers Python 3 writes bytes with at protocol 2. Every other
  global, and any state numpy would not write itself, is refused with the file's name;
- the content is checked: keys, ``data`` (N, 3072) uint8, N labels in range, the class names;
- ``download`` is refused (no internet): the error says where to get the archive.

Layout under ``data_prefix`` (``data_root`` joined), as extracted from the official archives::

    cifar-10-batches-py/                 cifar-100-python/
    ├── data_batch_1 ... data_batch_5    ├── train       50000 images
    ├── test_batch                       ├── test        10000 images
    └── batches.meta                     └── meta

A batch is a dict with ``data`` (N, 3072) uint8 (per image 1024 R, 1024 G, 1024 B values, rows
of 32) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100): a list of N ints. Images come
out as (32, 32, 3) RGB arrays in ``img``, exactly as from mmpretrain's classes.

In a config (``custom_imports=dict(imports=['mmmod'])``)::

    dataset=dict(type='SafeCIFAR10', data_root='data/cifar10', split='train',
                 verify_md5=False)  # False only for generated data
"""
import hashlib
import io
import pickle
from types import MappingProxyType
from typing import Any, Dict, List, Optional

import numpy as np
from mmengine.fileio import exists, get, join_path
from mmpretrain.datasets import CIFAR10, CIFAR100

from mmmod.compat.safe_numpy import NDARRAY, DtypeStandIn, RefusedNumpyState, reconstruct, \
    resolve
from mmmod.compat.safe_numpy import short as _short
from mmmod.registry import DATASETS
from .checks import EmptyDatasetError

__all__ = ['SafeCIFAR10', 'SafeCIFAR100', 'CIFARUnpickler', 'CIFAR_GLOBALS',
           'RefusedPickleError', 'load_cifar_pickle']

_GENERATE = 'tools/misc/generate_data.py'
PIXELS = 3 * 32 * 32  # one image in a row of ``data``


class RefusedPickleError(pickle.UnpicklingError):
    """A CIFAR file asks the unpickler for something a CIFAR file never holds."""


class _Refused(Exception):
    """Raised inside the unpickler by the helpers below; :func:`load_cifar_pickle` names the
    file."""


# ---------------------------------------------------------------------------------------------
# The unpickler
# ---------------------------------------------------------------------------------------------
# numpy's arrays and dtypes come from the inert stand-ins of mmmod.compat.safe_numpy (numpy's
# own objects would take any state a file gives them: a uint8 dtype flagged as holding objects
# makes an array of it write object pointers into 1-byte items); the rest of a CIFAR pickle
# needs only the two helpers below.
def _encode(text, encoding):
    """``_codecs.encode(text, 'latin1')``: how Python 3 writes ``bytes`` at protocol 2."""
    if type(text) is not str or encoding != 'latin1':
        raise _Refused(f"_codecs.encode({_short(text)}, {encoding!r}) (valid: a str and 'latin1')")
    return text.encode('latin1')


def _empty_bytes(*args):
    """``bytes()``: how Python 3 writes ``b''`` at protocol 2 (an array of 0 images)."""
    if args:
        raise _Refused(f'bytes{_short(args)} (valid: bytes() without arguments)')
    return b''


#: ``(module, name)`` -> what the unpickler gives for it; nothing else resolves. Python 3
#: writes ``builtins`` as ``__builtin__`` at protocol 2; numpy 2 writes ``numpy._core``.
CIFAR_GLOBALS = MappingProxyType({
    ('numpy.core.multiarray', '_reconstruct'): reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): reconstruct,
    ('numpy', 'ndarray'): NDARRAY,
    ('numpy', 'dtype'): DtypeStandIn,
    ('_codecs', 'encode'): _encode,
    ('__builtin__', 'bytes'): _empty_bytes,
    ('builtins', 'bytes'): _empty_bytes,
})


class CIFARUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`CIFAR_GLOBALS` (``encoding='latin1'``, as
    upstream: the official files were written by Python 2, whose strings come back as str).

    Containers, strings and numbers need no globals; anything that does, other than numpy's
    numeric arrays, is refused with :class:`RefusedPickleError` before it is looked up.
    """

    def __init__(self, file, path: str):
        super().__init__(file, encoding='latin1')
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return CIFAR_GLOBALS[module, name]
        except KeyError:
            allowed = ', '.join(sorted({f'{m}.{n}' for m, n in CIFAR_GLOBALS}))
            raise RefusedPickleError(
                f'{self.path} is refused: its pickle asks for the global {module}.{name}, which '
                'no CIFAR file holds (pickle.load would call it: the file is not an official '
                f'CIFAR file and may run code). Allowed: {allowed}.') from None

    def persistent_load(self, pid):
        raise RefusedPickleError(f'{self.path} is refused: its pickle holds a persistent id '
                                 f'{_short(pid)}, which no CIFAR file holds.')


def load_cifar_pickle(data: bytes, path: str) -> Dict[str, Any]:
    """Unpickle a CIFAR batch or meta file's bytes with :class:`CIFARUnpickler`.

    Args:
        data (bytes): the file's content.
        path (str): its path, for the messages.

    Returns:
        dict: its entries; bytes keys (files written by Python 3 from bytes) become str.

    Raises:
        RefusedPickleError: it asks for a global or a state no CIFAR file holds.
        ValueError: it is not a pickle of a dict.

    Example:
        >>> import pickle
        >>> entry = load_cifar_pickle(pickle.dumps({b'labels': [3, 1]}, protocol=2), 'batch')
        >>> entry
        {'labels': [3, 1]}
    """
    try:
        entry = resolve(CIFARUnpickler(io.BytesIO(data), path).load())
    except RefusedPickleError:
        raise
    except RefusedNumpyState as e:
        raise RefusedPickleError(f'{path} is refused: its pickle builds {e.what} ({e.valid}), '
                                 'which no CIFAR file holds.') from None
    except _Refused as e:
        raise RefusedPickleError(f'{path} is refused: its pickle builds {e}, which no CIFAR '
                                 'file holds.') from None
    except Exception as e:  # truncated, not a pickle, ...
        raise ValueError(f'{path} is not a CIFAR python pickle: {type(e).__name__}: {e}') from e
    if type(entry) is not dict:
        raise ValueError(f'{path} is not a CIFAR python pickle: it holds a '
                         f'{type(entry).__name__}, not a dict')
    return {key.decode('latin1') if type(key) is bytes else key: value
            for key, value in entry.items()}


# ---------------------------------------------------------------------------------------------
# The datasets
# ---------------------------------------------------------------------------------------------
@DATASETS.register_module()
class SafeCIFAR10(CIFAR10):
    """mmpretrain's :class:`~mmpretrain.datasets.CIFAR10` without code execution on load, and
    with the md5 check optional (for generated data).

    Args:
        data_root (str): the folder holding ``cifar-10-batches-py/`` (with ``data_prefix``).
        split (str): ``'train'`` (data_batch_1..5) or ``'test'`` (test_batch).
        metainfo (dict, optional): as upstream; ``classes`` defaults to CIFAR-10's.
        download (bool): must be False (the default here): nothing is downloaded.
        data_prefix (str): as upstream, a folder under ``data_root``.
        test_mode (bool): as upstream.
        verify_md5 (bool): check each file read against the official archive's md5. Generated
            data (``tools/misc/generate_data.py cifar10``) needs False.
        **kwargs: the rest of :class:`mmpretrain.datasets.BaseDataset`'s arguments.

    Example:
        >>> import tempfile
        >>> from mmmod.datasets import make_cifar10
        >>> root = make_cifar10(tempfile.mkdtemp(), num_train_per_class=1)
        >>> data = SafeCIFAR10(data_root=root, split='train', verify_md5=False)
        >>> len(data), data[0]['img'].shape, data.metainfo['classes'][:2]
        (10, (32, 32, 3), ('airplane', 'automobile'))
    """
    #: the batch key of the labels gt_label reads, and the dataset's name in messages
    label_key = 'labels'
    dataset_name = 'CIFAR-10'
    demo_name = 'cifar10'

    def __init__(self, data_root: str = '', split: str = 'train',
                 metainfo: Optional[dict] = None, download: bool = False,
                 data_prefix: str = '', test_mode: bool = False, verify_md5: bool = True,
                 **kwargs):
        if split not in ('train', 'test'):
            raise ValueError(f"{type(self).__name__} split must be one of ['test', 'train'], "
                             f'got {split!r}')
        if download:
            raise ValueError(
                f'{type(self).__name__} does not download (download=True): get {self.url} '
                f'(md5 {self.tgz_md5}), extract it in data_root so that '
                f'{self.base_folder}/ lies there, and leave download=False. A small demo set '
                f'in the same layout: python {_GENERATE} {self.demo_name} DIR (with '
                'verify_md5=False).')
        self.verify_md5 = verify_md5
        super().__init__(data_root=data_root, split=split, metainfo=metainfo, download=False,
                         data_prefix=data_prefix, test_mode=test_mode, **kwargs)

    @property
    def num_classes(self) -> int:
        """10 for CIFAR-10, 100 for CIFAR-100 (fine labels): the labels' range in the files."""
        return len(type(self).METAINFO['classes'])

    def _path(self, name: str = '') -> str:
        """``data_prefix/base_folder/name`` (the folder itself without ``name``)."""
        folder = join_path(self.data_prefix['root'], self.base_folder)
        return join_path(folder, name) if name else folder

    def _read(self, name: str, md5: Optional[str]) -> Dict[str, Any]:
        """The entries of ``base_folder/name``: read once, md5-checked, unpickled safely."""
        path = self._path(name)
        data = get(path)
        if self.verify_md5 and md5 is not None:
            actual = hashlib.md5(data).hexdigest()
            if actual != md5:
                raise ValueError(
                    f'{path}: md5 {actual} differs from the official {self.dataset_name} '
                    f'{name} ({md5}): the file is damaged or not the official one. Extract '
                    f'{self.filename} ({self.url}) again; generated data (python {_GENERATE} '
                    f'{self.demo_name} DIR) has other bytes and needs verify_md5=False.')
        return load_cifar_pickle(data, path)

    def _check_files(self, names: List[str]) -> None:
        missing = [name for name in names if not exists(self._path(name))]
        if missing:
            expected = [name for name, _ in self.train_list + self.test_list]
            raise FileNotFoundError(
                f'{type(self).__name__} split {self.split!r} needs '
                f'{", ".join(missing)} in {self._path()}, which '
                f'{"does" if len(missing) == 1 else "do"} not exist. Expected there: '
                f'{", ".join(expected + [self.meta["filename"]])} (the python version, '
                f'{self.filename} from {self.url}, extracted in data_root); a small demo set: '
                f'python {_GENERATE} {self.demo_name} DIR (with verify_md5=False).')

    def load_data_list(self) -> List[dict]:
        """Images and labels of the split's batch files; raises if they hold no image."""
        files = self.train_list if self.split == 'train' else self.test_list
        self._check_files([name for name, _ in files])
        images, labels = [], []
        for name, md5 in files:
            data, file_labels = self._check_batch(self._read(name, md5), self._path(name))
            images.append(data)
            labels.extend(file_labels)
        if not labels:
            raise EmptyDatasetError(
                f'{type(self).__name__} split {self.split!r} has no images: '
                f'{", ".join(name for name, _ in files)} in {self._path()} hold 0 rows of data.')
        # (N, 3072) -> (N, 32, 32, 3) views, as upstream
        imgs = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        if self.CLASSES is None:  # the file's classes have the lowest priority, as upstream
            self._load_meta()
        return [dict(img=img, gt_label=label) for img, label in zip(imgs, labels)]

    def _check_batch(self, entry: Dict[str, Any], path: str):
        """``data`` (N, 3072) uint8 and N int labels in range, or a ValueError naming ``path``."""
        missing = [key for key in ('data', self.label_key) if key not in entry]
        if missing:
            raise ValueError(f'{path}: a {self.dataset_name} batch needs the keys '
                             f"'data' and {self.label_key!r}; missing {missing}, found "
                             f'{sorted(map(str, entry))}')
        data, labels = entry['data'], entry[self.label_key]
        if type(data) is not np.ndarray or data.dtype != np.uint8 or data.ndim != 2 or \
                data.shape[1] != PIXELS:
            what = f'{data.dtype} {data.shape}' if isinstance(data, np.ndarray) \
                else type(data).__name__
            raise ValueError(f"{path}: 'data' must be a uint8 array (N, {PIXELS}) (per image "
                             f'1024 R, G, B values), got {what}')
        if type(labels) not in (list, tuple) or len(labels) != len(data) or \
                not all(type(label) is int for label in labels):
            what = f'{len(labels)} items' if isinstance(labels, (list, tuple)) \
                else type(labels).__name__
            raise ValueError(f'{path}: {self.label_key!r} must be a list of {len(data)} ints '
                             f'(one per row of data), got {what}')
        if labels and not 0 <= min(labels) <= max(labels) < self.num_classes:
            raise ValueError(f'{path}: {self.dataset_name} {self.label_key} are 0..'
                             f'{self.num_classes - 1}, got {min(labels)}..{max(labels)}')
        return data, labels

    def _load_meta(self) -> None:
        """The class names of the meta file, when neither the class nor metainfo gives them."""
        name, key = self.meta['filename'], self.meta['key']
        self._check_files([name])
        entry = self._read(name, self.meta.get('md5'))
        names = entry.get(key)
        path = self._path(name)
        if type(names) not in (list, tuple) or len(names) != self.num_classes or \
                not all(isinstance(n, (str, bytes)) for n in names):
            raise ValueError(f'{path}: {key!r} must be a list of {self.num_classes} class '
                             f'names, got {_short(names)}')
        self._metainfo['classes'] = tuple(
            n.decode('latin1') if isinstance(n, bytes) else n for n in names)

    def extra_repr(self) -> List[str]:
        return super().extra_repr() + [f'Split: \t{self.split}',
                                       f'Verify md5: \t{self.verify_md5}']


@DATASETS.register_module()
class SafeCIFAR100(SafeCIFAR10, CIFAR100):
    """mmpretrain's :class:`~mmpretrain.datasets.CIFAR100` without code execution on load
    (``cifar-100-python/`` with ``train``, ``test``, ``meta``); ``gt_label`` is the fine label.
    Arguments as :class:`SafeCIFAR10`.

    Example:
        >>> import tempfile
        >>> from mmmod.datasets import make_cifar100
        >>> root = make_cifar100(tempfile.mkdtemp(), num_train_per_class=1)
        >>> data = SafeCIFAR100(data_root=root, split='train', verify_md5=False)
        >>> len(data), len(data.metainfo['classes'])
        (100, 100)
    """
    label_key = 'fine_labels'
    dataset_name = 'CIFAR-100'
    demo_name = 'cifar100'
