"""Small datasets in the real on-disk formats, each written once per test session."""
import pytest

from mmmod.datasets import make_cityscapes, make_imagenet, make_voc


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'slow: end-to-end runs in subprocesses (minutes on 2 CPU cores); CI runs them')


@pytest.fixture(scope='session')
def imagenet_data_root(tmp_path_factory):
    """``data_root`` of an ImageNet: 4 classes, 1 train and 1 val image each, 64x64."""
    root = tmp_path_factory.mktemp('imagenet')
    return make_imagenet(root, num_classes=4, num_train_per_class=1, num_val_per_class=1,
                         image_size=(64, 64))


@pytest.fixture(scope='session')
def cityscapes_data_root(tmp_path_factory):
    """``data_root`` of a Cityscapes: 2 train and 2 val images, 128x256."""
    root = tmp_path_factory.mktemp('cityscapes')
    return make_cityscapes(root, num_train=2, num_val=2, image_size=(128, 256))


@pytest.fixture(scope='session')
def voc_data_root(tmp_path_factory):
    """``data_root`` (the ``VOCdevkit`` folder) of a VOC0712: 2 trainval images in each of
    VOC2007 and VOC2012, 2 VOC2007 test images, 200x300."""
    root = tmp_path_factory.mktemp('voc')
    return make_voc(root, num_trainval=2, num_test=2, image_size=(200, 300))
