"""tools/publish_model.py and tools/model_converters/standard_to_mod.py as subprocesses; the
source checkpoints are built here from fresh torchvision / mmpretrain models (no download)."""
import glob
import hashlib
import os.path as osp
import re

import torch
import torchvision
from mmengine.logging import MessageHub

from mmmod.models import MobileNetV2MoD, ResNetMoD

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONVERTER = 'model_converters/standard_to_mod.py'


def test_publish_model_strips_training_state(tmp_path, tool_env, run_tool):
    model = ResNetMoD(depth=18)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 64, 64))[-1].sum().backward()
    optimizer.step()
    hub = MessageHub('publish-test')
    hub.update_scalar('train/loss', 1.0)
    src = tmp_path / 'epoch_1.pth'
    torch.save(dict(meta=dict(epoch=1, iter=2), state_dict=model.state_dict(),
                    optimizer=optimizer.state_dict(), message_hub=hub.state_dict(),
                    param_schedulers=[dict(last_epoch=1)]), src)

    out = run_tool(['publish_model.py', src, tmp_path / 'pub' / 'resnet18-mod.pth'],
                   tool_env(src))
    assert out.returncode == 0, out.stdout[-4000:]
    published = glob.glob(str(tmp_path / 'pub' / '*.pth'))
    assert len(published) == 1 and out.stdout.strip().endswith(published[0]), out.stdout
    match = re.fullmatch(r'resnet18-mod-([0-9a-f]{8})\.pth', osp.basename(published[0]))
    assert match, published
    with open(published[0], 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest()[:8] == match.group(1)
    assert not glob.glob(str(tmp_path / 'pub' / '*.tmp'))
    # no HistoryBuffer / optimizer left: loads with weights_only and nothing allow-listed
    with torch.serialization.safe_globals([]):
        checkpoint = torch.load(published[0], map_location='cpu', weights_only=True)
    assert set(checkpoint) == {'meta', 'state_dict'}
    for key, value in model.state_dict().items():
        assert torch.equal(checkpoint['state_dict'][key], value), key


def _convert(src, config, dst, tool_env, run_tool):
    out = run_tool([CONVERTER, src, osp.join(REPO, config), dst], tool_env(src))
    assert out.returncode == 0, out.stdout[-4000:]
    return out.stdout, torch.load(dst, map_location='cpu')['state_dict']


def test_torchvision_resnet50_to_resnet50_mod(tmp_path, tool_env, run_tool):
    tv = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(tv, tmp_path / 'tv.pth')
    log, state = _convert(tmp_path / 'tv.pth', 'configs/imagenet/resnet50-mod_8xb32_in1k.py',
                          tmp_path / 'mod.pth', tool_env, run_tool)
    assert 'torchvision ResNet' in log
    for key in ('conv1.weight', 'bn1.running_var', 'layer1.0.downsample.1.weight',
                'layer1.2.conv3.weight',  # block 2: standard
                'layer3.4.bn2.bias'):
        assert torch.equal(state['backbone.' + key], tv[key]), key
    target = ResNetMoD(depth=50).state_dict()
    standard = [k for k in target if 'selector' not in k and 'branch' not in k]
    assert sorted('backbone.' + k for k in standard) == sorted(state)
    assert not any(k.startswith('backbone.layer1.1.') for k in state)  # MoD block: no source
    assert re.search(r'not loaded .*\n(.*\n)*  layer1\.1\.selector\.fc1\.weight', log)
    assert re.search(r'source tensors unused: .*\n(.*\n)*  layer1\.1\.conv1\.weight', log)

    # the output is a Pretrained checkpoint for the MoD backbone
    backbone = ResNetMoD(depth=50, init_cfg=dict(type='Pretrained', checkpoint=str(
        tmp_path / 'mod.pth'), prefix='backbone.'))
    backbone.init_weights()
    assert torch.equal(backbone.layer1[2].conv3.weight, tv['layer1.2.conv3.weight'])


def test_torchvision_mobilenet_v2_to_mod(tmp_path, tool_env, run_tool):
    tv = torchvision.models.mobilenet_v2(weights=None).state_dict()
    torch.save(tv, tmp_path / 'tv.pth')
    log, state = _convert(tmp_path / 'tv.pth', 'configs/imagenet/mobilenet-v2-mod_8xb32_in1k.py',
                          tmp_path / 'mod.pth', tool_env, run_tool)
    assert 'torchvision MobileNetV2' in log
    pairs = {'conv1.conv.weight': 'features.0.0.weight',
             'layer1.0.conv.0.conv.weight': 'features.1.conv.0.0.weight',  # t=1: dw
             'layer1.0.conv.1.bn.weight': 'features.1.conv.2.weight',  # t=1: pw-linear bn
             'layer2.0.conv.0.conv.weight': 'features.2.conv.0.0.weight',  # expand
             'layer2.0.conv.2.conv.weight': 'features.2.conv.2.weight',  # pw-linear
             'layer2.0.conv.2.bn.running_mean': 'features.2.conv.3.running_mean',
             'layer3.2.conv.1.conv.weight': 'features.6.conv.1.0.weight',  # block 2: standard
             'conv2.bn.weight': 'features.18.1.weight'}
    for mod_key, tv_key in pairs.items():
        assert torch.equal(state['backbone.' + mod_key], tv[tv_key]), mod_key
    target = MobileNetV2MoD(arch='MoD').state_dict()
    assert not any(k.startswith('backbone.layer2.1.') for k in state)  # MoD block
    # every standard tensor of the MoD backbone found its source
    standard = [k for k in target if 'selector' not in k and 'branch' not in k]
    assert all('backbone.' + k in state for k in standard)
    assert 'shape mismatch (skipped): 0' in log

    # MoD-L has other widths: shape-checked, skipped and reported, not loaded wrongly
    log, state = _convert(tmp_path / 'tv.pth', 'configs/imagenet/mobilenet-v2-mod-l_8xb32_in1k.py',
                          tmp_path / 'mod-l.pth', tool_env, run_tool)
    assert re.search(r'shape mismatch \(skipped\): [1-9]', log)
    assert 'layer2.0.conv.2.conv.weight: source (24, 96, 1, 1) vs target (32, 96, 1, 1)' in log
    assert 'backbone.conv1.conv.weight' in state


def test_mmpretrain_resnet_to_resnet86_mod(tmp_path, tool_env, run_tool):
    from mmpretrain.models import ResNet
    src = {'backbone.' + k: v for k, v in ResNet(depth=50).state_dict().items()}
    src['head.fc.weight'] = torch.zeros(10, 2048)
    torch.save(dict(state_dict=src, meta=dict()), tmp_path / 'mmpretrain.pth')
    log, state = _convert(tmp_path / 'mmpretrain.pth', 'configs/imagenet/resnet86-mod_8xb32_in1k.py',
                          tmp_path / 'mod.pth', tool_env, run_tool)
    assert 'mmpretrain classifier' in log
    assert torch.equal(state['backbone.layer3.4.conv2.weight'], src['backbone.layer3.4.conv2.weight'])
    assert 'backbone.layer3.6.conv1.weight' not in state  # R50 has 6 blocks in stage 3, R86 18
    assert not any('head' in k for k in state)
