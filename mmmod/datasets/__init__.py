"""Small demo datasets in the real on-disk formats, and a check that configured data exists."""
from .checks import check_dataset_paths
from .generate import make_cityscapes, make_imagenet, make_voc

__all__ = ['make_imagenet', 'make_cityscapes', 'make_voc', 'check_dataset_paths']
