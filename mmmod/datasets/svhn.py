"""The Street View House Numbers dataset (SVHN, format 2: cropped 32x32 digits).

mmpretrain has CIFAR-10/100 but no SVHN; dynamic channel execution (Spasov & Lio, Sec. 3.1)
trains on it. The dataset reads the official MATLAB files as downloaded from
http://ufldl.stanford.edu/housenumbers/::

    data_root/
    ├── train_32x32.mat    X: (32, 32, 3, 73257) uint8, y: (73257, 1) labels 1..10
    ├── test_32x32.mat     26032 images
    └── extra_32x32.mat    531131 images (the paper trains on train + extra: 604388)

Label 10 is the digit 0 (the files count digits 1..10), so ``gt_label = y % 10``. Images are
kept in memory as (32, 32, 3) RGB arrays in ``img``, as mmpretrain's CIFAR datasets keep theirs,
so CIFAR pipelines (``RandomCrop(32, padding=4)``, ``RandomFlip``, ``PackInputs``) apply as is.
"""
import os.path as osp
from typing import List, Sequence

import numpy as np
from mmengine.dataset import BaseDataset

from mmmod.registry import DATASETS

__all__ = ['SVHN', 'SVHN_SPLITS', 'SVHN_FILES']

#: split -> the .mat files it reads, in order.
SVHN_SPLITS = {
    'train': ('train', ),
    'test': ('test', ),
    'extra': ('extra', ),
    'train+extra': ('train', 'extra'),
}
SVHN_FILES = '{}_32x32.mat'
SVHN_CLASSES = tuple(str(d) for d in range(10))


@DATASETS.register_module()
class SVHN(BaseDataset):
    """SVHN digits from the official ``*_32x32.mat`` files.

    Args:
        data_root (str): the folder holding the .mat files.
        split (str): one of ``'train'``, ``'test'``, ``'extra'``, ``'train+extra'``.
        pipeline (Sequence): transforms, as for mmpretrain's CIFAR10.
        **kwargs: the rest of :class:`mmengine.dataset.BaseDataset`'s arguments.

    Example:
        >>> import tempfile
        >>> from mmmod.datasets import make_svhn
        >>> root = make_svhn(tempfile.mkdtemp(), num_images=(4, 2, 3))
        >>> data = SVHN(data_root=root, split='train+extra')
        >>> len(data), data[0]['img'].shape, data.metainfo['classes'][:3]
        (7, (32, 32, 3), ('0', '1', '2'))
    """
    METAINFO = dict(classes=SVHN_CLASSES)

    def __init__(self, data_root: str = '', split: str = 'train',
                 pipeline: Sequence = (), **kwargs):
        if split not in SVHN_SPLITS:
            raise ValueError(f'SVHN split must be one of {sorted(SVHN_SPLITS)}, got {split!r}')
        self.split = split
        super().__init__(data_root=data_root, pipeline=list(pipeline), **kwargs)

    def load_data_list(self) -> List[dict]:
        from scipy.io import loadmat  # scipy comes with mmdet; only SVHN needs it here

        data_list = []
        for part in SVHN_SPLITS[self.split]:
            path = osp.join(self.data_root, SVHN_FILES.format(part))
            if not osp.isfile(path):
                raise FileNotFoundError(
                    f'SVHN split {self.split!r} needs {path}, which does not exist. Expected '
                    f'in data_root: {", ".join(SVHN_FILES.format(p) for p in ("train", "test", "extra"))}'
                    ' (the official format-2 files); a small demo set: python '
                    'tools/misc/generate_data.py svhn DIR')
            try:
                mat = loadmat(path)
                images, labels = mat['X'], mat['y']
            except Exception as e:  # not a MATLAB file, or one without X / y
                raise ValueError(f'{path} is not an SVHN .mat file with X (32, 32, 3, N) and y '
                                 f'(N, 1): {type(e).__name__}: {e}') from e
            if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or \
                    labels.reshape(-1).shape[0] != images.shape[3]:
                raise ValueError(f'{path}: X must be (32, 32, 3, N) and y (N, 1), got '
                                 f'{images.shape} and {labels.shape}')
            labels = labels.reshape(-1).astype(np.int64)
            if labels.min(initial=1) < 1 or labels.max(initial=10) > 10:
                raise ValueError(f'{path}: SVHN labels are 1..10 (10 is the digit 0), got '
                                 f'{labels.min()}..{labels.max()}')
            images = np.ascontiguousarray(images.transpose(3, 0, 1, 2))  # (N, 32, 32, 3)
            data_list.extend(
                dict(img=img, gt_label=int(label % 10)) for img, label in zip(images, labels))
        return data_list

    def get_gt_labels(self) -> np.ndarray:
        """(N,) labels 0..9, for mmpretrain's evaluators."""
        return np.array([self.get_data_info(i)['gt_label'] for i in range(len(self))],
                        dtype=np.int64)

    def extra_repr(self) -> List[str]:
        return [f'Split: \t{self.split}', f'Data root: \t{self.data_root}']

