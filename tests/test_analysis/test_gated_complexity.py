"""Expected MACs of gated models (mmmod.analysis.complexity.gated_complexity) against the plain
ResNet traced by mmengine and against the gate networks' layer shapes."""
import pytest
import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.registry import DefaultScope, init_default_scope

from mmmod.analysis.complexity import complexity, gated_complexity, ungated_macs
from mmmod.models.layers.gumbel_gate import iter_gated_blocks

SIZE = 64


def classifier(backbone):
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(dict(
            type='ImageClassifier', backbone=dict(depth=50, **backbone),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=10, in_channels=2048),
            data_preprocessor=dict(type='ClsDataPreprocessor')))


def batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, SIZE, SIZE), generator=g, dtype=torch.uint8)
              for _ in range(n)]
    return [dict(inputs=images[:n // 2], data_samples=None),
            dict(inputs=images[n // 2:], data_samples=None)]


@pytest.fixture(scope='module')
def plain_and_gated():
    torch.manual_seed(0)
    return classifier(dict(type='ResNet')), classifier(dict(type='GatedResNet'))


def test_all_gates_on_equals_plain_resnet(plain_and_gated):
    plain, gated = plain_and_gated
    result = gated_complexity(gated, batches(), gate_mode='on')
    # the plain ResNet's block convolutions, traced by mmengine
    analyzer = FlopAnalyzer(plain.backbone, inputs=(torch.zeros(1, 3, SIZE, SIZE), ))
    analyzer.unsupported_ops_warnings(False)
    per_module = analyzer.by_module_and_operator()
    plain_block_convs = sum(per_module[f'layer{i}'].get('conv', 0) for i in range(1, 5))
    assert result['gated_macs'] == result['gated_full_macs'] == plain_block_convs
    assert result['ungated_macs'] < complexity(plain, (SIZE, SIZE))['macs']
    assert result['ratio'] == pytest.approx(
        (result['ungated_macs'] + result['gated_macs'] + result['gate_net_macs'])
        / (result['ungated_macs'] + plain_block_convs))
    assert result['num_images'] == 2 and result['gate_rate'] == 1.0


def test_ungated_part_is_stem_and_head(plain_and_gated):
    """The un-gated part is what the plain network costs outside its four stages, traced the
    same way (whole model, 'paper' convention)."""
    from mmengine.analysis.jit_handles import elementwise_flop_counter

    from mmmod.analysis.complexity import ACTIVATION_OPS, _TensorForward
    plain, gated = plain_and_gated
    analyzer = FlopAnalyzer(_TensorForward(plain.eval()),
                            inputs=(torch.zeros(1, 3, SIZE, SIZE), ))
    for op in ACTIVATION_OPS:
        analyzer.set_op_handle(op, elementwise_flop_counter(0, 1))
    analyzer.unsupported_ops_warnings(False)
    by_module = analyzer.by_module()
    stages = sum(by_module[f'model.backbone.layer{i}'] for i in range(1, 5))
    assert by_module[''] == complexity(plain, (SIZE, SIZE))['macs']
    assert ungated_macs(gated, (SIZE, SIZE)) == by_module[''] - stages


def test_closed_gates_cost_less_and_match_the_minimal_blocks():
    torch.manual_seed(0)
    model = classifier(dict(type='GatedResNet', gate_type='independent'))
    blocks = [b for _, b in iter_gated_blocks(model.backbone)]
    with torch.no_grad():
        for block in blocks:
            block.gate.logits[:] = torch.tensor([4.0, 0.1])  # every learned gate off
    result = gated_complexity(model, batches())
    model.eval().backbone(torch.zeros(1, 3, SIZE, SIZE))  # block.flops reads the input size
    assert result['gate_rate'] == 0.0
    assert result['gate_net_macs'] == 0.0  # independent gates: constants at inference
    assert result['gated_macs'] < 0.2 * result['gated_full_macs']
    # only the always-on groups run: the block cost at those channel counts
    minimal = sum(float(b.flops({p: torch.tensor([float(min(g.channels,
                                                            g.always_on * g.group_size))])
                                 for p, g in b.channel_gates.items()})[0]) for b in blocks)
    assert result['gated_macs'] == pytest.approx(minimal)
    assert result['macs'] < result['full_macs']


def test_gate_network_cost_from_layer_shapes(plain_and_gated):
    _, gated = plain_and_gated
    result = gated_complexity(gated, batches())
    expected, hw = 0, {}
    # block input sizes of ResNet-50 at SIZE: stride 4 before layer1, then /2 per later stage
    for name, block in iter_gated_blocks(gated.backbone):
        stage, index = int(name[5]), int(name.split('.')[1])
        side = SIZE // 4 // (2 ** (stage - 1 - (index == 0 and stage > 1)))
        c_in = block.gate.fc1.in_features
        # average pool H*W*C (paper S1.4) + FC C -> 16 and FC 16 -> 2 per gate
        expected += side * side * c_in + block.gate.fc1.weight.numel() \
            + block.gate.fc2.weight.numel()
        hw[name] = side
    assert result['gate_net_macs'] == expected
    assert 0 < result['macs'] - result['ungated_macs'] - result['gated_macs'] == expected


def test_averages_over_images(plain_and_gated):
    _, gated = plain_and_gated
    result = gated_complexity(gated, batches(4), num_images=3)
    assert result['num_images'] == 3
    assert result['macs_min'] <= result['macs'] <= result['macs_max']
