"""Shared test helpers: small datasets in the real on-disk formats, each written once per test
session, and random norm statistics."""
import pytest
import torch
import torch.nn as nn

from mmmod.datasets import make_cityscapes, make_imagenet, make_voc


def randomize_norm_stats(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Random affine parameters and running statistics for every ``BatchNorm2d`` of ``model``
    (weight, bias, mean ~ N(0, 1), var ~ U(0.5, 1.5)), so that a wrong channel, a missed norm
    or a folding error shows in the outputs. Draws from ``generator`` in module order, four
    tensors per norm in that order, so a seeded caller gets the same numbers every time (the
    golden fixtures of test_channel_structure.py depend on it) and can go on drawing from it.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator))
                module.running_mean.copy_(
                    torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(
                    torch.rand(module.running_var.shape, generator=generator) + .5)
    return model


@pytest.fixture(scope='session')
def randomize_norms():
    """:func:`randomize_norm_stats` (tests run with ``--import-mode=importlib``, where
    ``from conftest import ...`` is not reliable: a fixture hands the function over)."""
    return randomize_norm_stats


@pytest.fixture(scope='session')
def bandit_steps():
    """``bandit_steps(model, data, loss, steps=3, lr=0.01) -> losses``: SGD steps (Nesterov
    momentum, weight decay) of a channel-bandit backbone with ChannelBanditHook's own work
    around each (``begin_step`` / ``end_step``: select, freeze the inactive channels, restore
    them after the optimizer step, observe); ``loss(model, x, y)`` gives the step's loss."""
    from mmmod.engine.hooks.channel_bandit_hook import begin_step, end_step

    def run(model, data, loss, steps=3, lr=0.01):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9,
                                    weight_decay=1e-2, nesterov=True)
        losses = []
        for x, y in data[:steps]:
            _, saved = begin_step(model, optimizer)
            value = loss(model, x, y)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            end_step(model, optimizer, saved)
            losses.append(value.item())
        return losses

    return run


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
