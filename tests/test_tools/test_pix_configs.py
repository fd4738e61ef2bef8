"""The Pick-or-Mix configs end to end, one per task, on the session's generated data.

Reuses test_paper_configs.py's mechanism: each PiX config goes through its task's stock-config
template (``mod_case``, with ``_base_`` pointed at the PiX config) and the stock test's train 2
iterations / test / metric checks. Then the checkpoint tells that what trained was a PiX network.
"""
import importlib.util
import os.path as osp

import pytest
from mmengine.runner.checkpoint import _load_checkpoint

pytestmark = pytest.mark.slow


def _paper_tests():
    """test_paper_configs.py, whose ``mod_case`` / ``STOCK`` are reused here (a private copy of
    the module: adding the PiX cases below changes nothing in the real one)."""
    path = osp.join(osp.dirname(osp.abspath(__file__)), 'test_paper_configs.py')
    spec = importlib.util.spec_from_file_location('mmmod_test_paper_configs_for_pix', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAPER = _paper_tests()
# PiX config -> (its stock case, template edits (old, new) besides the _base_), as MOD_CASES
PIX_CASES = {
    'configs/pix/resnet50-pix_8xb32_in1k.py': ('mmpretrain-resnet50-in1k', ()),
    'configs/pix/fcn_r50-pix-d8_4xb2-80k_cityscapes-512x1024.py':
    ('mmseg-fcn-r50-cityscapes',
     # no ImageNet run behind this test: random backbone
     (('    pretrained=None,', '    pretrained=None,\n    backbone=dict(init_cfg=None),'), )),
    # the stock VOC template already sets model.backbone.init_cfg=None
    'configs/pix/faster-rcnn_r50-pix_fpn_1x_voc0712.py': ('mmdet-faster-rcnn-r50-voc0712', ()),
}
PAPER.MOD_CASES.update(PIX_CASES)


@pytest.mark.parametrize('config', PIX_CASES, ids=lambda c: osp.basename(c)[:-3])
def test_pix_config_trains_and_tests(config, request, tmp_path, tool_env, run_tool):
    PAPER.STOCK.test_stock_config_trains_and_tests(PAPER.mod_case(config), request, tmp_path,
                                                   tool_env, run_tool)
    checkpoint = (tmp_path / 'train' / 'last_checkpoint').read_text().strip()
    state = _load_checkpoint(str(checkpoint), map_location='cpu')['state_dict']
    assert 'backbone.layer3.1.pix.scorer.fc1.weight' in state
    assert 'backbone.layer3.1.conv1.weight' not in state  # PiX replaced the squeeze conv
