import subprocess
import sys
import textwrap

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from mmmod.analysis.channel_selection import (mod_block_names, plot_selection_frequencies,
                                              selection_counts)
from mmmod.datasets import make_imagenet

# Bounds a hung subprocess; no normal run comes near it, even on a loaded machine.
HANG_TIMEOUT_S = 30 * 60


@pytest.fixture(scope='module')
def cfg_file(tmp_path_factory):
    root = tmp_path_factory.mktemp('sel')
    data = make_imagenet(str(root / 'imagenet'), num_classes=3, num_train_per_class=2,
                         num_val_per_class=4)
    path = root / 'cfg.py'
    path.write_text(textwrap.dedent(f"""
        default_scope = 'mmpretrain'
        custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
        model = dict(type='ImageClassifier',
                     data_preprocessor=dict(num_classes=1000, mean=[123.675, 116.28, 103.53],
                                            std=[58.395, 57.12, 57.375], to_rgb=True),
                     backbone=dict(type='ResNetMoD', depth=18),
                     neck=dict(type='GlobalAveragePooling'),
                     head=dict(type='LinearClsHead', num_classes=1000, in_channels=512))
        test_dataloader = dict(batch_size=3, num_workers=0,
                               sampler=dict(type='DefaultSampler', shuffle=False),
                               dataset=dict(type='ImageNet', data_root={data!r}, split='val',
                                            pipeline=[dict(type='LoadImageFromFile'),
                                                      dict(type='PackInputs')]))
    """))
    return str(path)


def test_selection_counts_per_class(cfg_file):
    cfg = Config.fromfile(cfg_file)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        from mmpretrain.registry import MODELS
        model = MODELS.build(cfg.model)
        loader = Runner.build_dataloader(cfg.test_dataloader)
        assert 'backbone.layer3.1' in mod_block_names(model)
        k = model.backbone.layer3[1].k
        counts = selection_counts(model, loader, 'backbone.layer3.1', progress=False)
    assert sorted(counts) == [0, 1, 2]
    for c in counts.values():
        assert c.shape == (256, ) and c.sum() == 4 * k  # 4 samples x k picks each
        assert c.max() <= 4  # a channel is picked at most once per sample
    with pytest.raises(KeyError, match='not a MoD block'):
        selection_counts(model, loader, 'backbone.layer3.0', progress=False)


def test_plot(tmp_path):
    counts = {0: np.arange(8), 3: np.ones(8, dtype=np.int64)}
    out = plot_selection_frequencies(counts, str(tmp_path / 'sel.png'), classes=[3],
                                     class_names=['a', 'b', 'c', 'pug'])
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(KeyError, match=r'no samples of classes \[5\]'):
        plot_selection_frequencies(counts, str(tmp_path / 'x.png'), classes=[5])


def test_tool_end_to_end(cfg_file, tmp_path):
    out = tmp_path / 'fig4.png'
    proc = subprocess.run([sys.executable, 'tools/analysis/channel_selection.py', cfg_file,
                           '--block', 'backbone.layer3.1', '--classes', '0', '2',
                           '--out', str(out)], capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:4] == b'\x89PNG' and 'wrote' in proc.stdout
    listing = subprocess.run([sys.executable, 'tools/analysis/channel_selection.py', cfg_file],
                             capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert 'backbone.layer1.1' in listing.stdout
