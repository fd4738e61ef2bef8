"""Small demo datasets in the real on-disk formats, checks that configured data exists and is
not empty, and the pipeline check of label maps against their images (registered on import)."""
from .checks import EmptyDatasetError, check_dataset_paths, check_datasets_not_empty
from .cifar import SafeCIFAR10, SafeCIFAR100
from .generate import (make_cifar10, make_cifar100, make_cityscapes, make_imagenet, make_svhn,
                       make_voc)
from .svhn import SVHN
from .transforms import CheckSegMapShape

__all__ = [
    'make_imagenet', 'make_cityscapes', 'make_voc', 'make_svhn', 'make_cifar10', 'make_cifar100',
    'SVHN', 'SafeCIFAR10', 'SafeCIFAR100', 'check_dataset_paths', 'check_datasets_not_empty',
    'EmptyDatasetError', 'CheckSegMapShape'
]
