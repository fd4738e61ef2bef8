"""Static graph, proven: trace, torch.export and ONNX reproduce eager outputs on new inputs."""
import pytest
import torch

from mmmod.models import MobileNetV2MoD, ResNetMoD


def models():
    torch.manual_seed(0)
    r = ResNetMoD(depth=18, zero_init_residual=False, out_indices=(2, 3))
    m = MobileNetV2MoD(arch='MoD', out_indices=(7, ))
    for model in (r, m):
        model.init_weights()
        model.eval()
    return {'resnet18-mod': r, 'mobilenetv2-mod': m}


@pytest.fixture(scope='module', params=['resnet18-mod', 'mobilenetv2-mod'])
def model(request):
    return models()[request.param]


def check_close(got, model, x):
    with torch.no_grad():
        expected = model(x.clone())
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(torch.as_tensor(g), e, rtol=1e-4, atol=1e-4)


def test_jit_trace(model):
    x0, x1 = torch.randn(2, 1, 3, 96, 96)
    traced = torch.jit.trace(model, (x0, ), check_trace=False)
    with torch.no_grad():
        got = traced(x1.clone())
    # x1 selects other channels than x0: the traced graph must select, not replay
    check_close(got, model, x1)


def test_torch_export(model):
    x0, x1 = torch.randn(2, 1, 3, 96, 96)
    ep = torch.export.export(model, (x0, ))
    with torch.no_grad():
        got = ep.module()(x1.clone())
    check_close(got, model, x1)


def test_onnx_export_matches_onnxruntime(model, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    x0, x1 = torch.randn(2, 1, 3, 96, 96)
    path = tmp_path / 'model.onnx'
    torch.onnx.export(model, (x0, ), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    got = sess.run(None, {sess.get_inputs()[0].name: x1.numpy()})
    check_close(got, model, x1)
