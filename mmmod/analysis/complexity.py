"""Multiply-accumulates and parameters of a model at its test input size, with mmengine's
jit-trace-based :class:`mmengine.analysis.FlopAnalyzer` (no hand-written counter).

Dynamic blocks are counted at the size they really run: the analyzer traces one forward and
counts the ops in the graph, so a :class:`~mmmod.models.layers.MoDBlock` contributes its
selector, and the convolutions of its slim branch at width k on the gathered (N, k, H, W)
tensor, not at the block's full width C (``tests/test_analysis/test_complexity.py`` checks a
MoD block's convs against k-channel convs).

Two counting conventions (one MAC = one multiply-add; mmengine's "flops" are MACs):

- ``'mmengine'``: mmengine's default handles -- convolutions, linear/matmul, normalisation
  layers (in eval one per element, two with an affine scale and shift), pooling and
  upsampling. Activations, residual additions, top-k, gathers and the MoD fusion are not
  counted.
- ``'paper'`` (default): the above plus one MAC per output element of every activation
  function (ReLU, ReLU6, ...), which is what ptflops-style counters -- and the MoD paper's
  Table 2 -- count: MobileNetV2 comes out at 320.30 M vs the paper's 320.36 M.
"""
import copy
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

CONVENTIONS = ('paper', 'mmengine')
# Traced activation ops counted by the 'paper' convention, one MAC per output element.
ACTIVATION_OPS = ('aten::relu', 'aten::relu_', 'aten::hardtanh', 'aten::hardtanh_',
                  'aten::leaky_relu', 'aten::leaky_relu_', 'aten::elu', 'aten::elu_',
                  'aten::prelu', 'aten::silu', 'aten::silu_', 'aten::gelu',
                  'aten::hardswish', 'aten::hardswish_')
DEFAULT_SHAPE = (224, 224)

# What the paper reports at 224x224 (Table 2): preset name -> (MMAC, params in M).
PAPER_COMPLEXITY: Dict[str, Tuple[float, float]] = {
    'mobilenetv2': (320.36, 3.5),
    'mobilenetv2-mod': (220.56, 2.94),
    'mobilenetv2-mod-l': (344.76, 3.34),
}


class _TensorForward(nn.Module):
    """``model(inputs, data_samples, mode='tensor')`` as a one-input module for the tracer."""

    def __init__(self, model: nn.Module, data_samples=None):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor):
        return self.model(inputs, self.data_samples, mode='tensor')


def _det_data_samples(shape: Sequence[int], batch: int = 1):
    """Minimal mmdet data samples carrying the image meta a detector's tensor mode reads."""
    from mmdet.structures import DetDataSample
    h, w = shape
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1.0, 1.0))
    return [DetDataSample(metainfo=meta) for _ in range(batch)]


def _flop_analyzer(model: nn.Module, shape, convention: str, in_channels: int, data_samples):
    """mmengine's FlopAnalyzer on one zero (1, in_channels, H, W) input, quiet, with the
    ``'paper'`` convention's activation counting; returns ``(analyzer, traced module)``."""
    from mmengine.analysis import FlopAnalyzer
    from mmengine.analysis.jit_handles import elementwise_flop_counter
    from mmengine.model import BaseModel

    traced = _TensorForward(model, data_samples) if isinstance(model, BaseModel) else model
    analyzer = FlopAnalyzer(traced, inputs=(torch.zeros(1, in_channels, *shape), ))
    if convention == 'paper':
        for op in ACTIVATION_OPS:
            analyzer.set_op_handle(op, elementwise_flop_counter(0, 1))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    return analyzer, traced


def complexity(model: nn.Module,
               shape: Sequence[int] = DEFAULT_SHAPE,
               convention: str = 'paper',
               in_channels: int = 3,
               data_samples=None) -> dict:
    """MACs and parameters of ``model`` on one (1, in_channels, H, W) input.

    Args:
        model (nn.Module): an OpenMMLab model (``BaseModel``: traced in ``mode='tensor'``) or
            any module taking one image tensor. Not modified (a deep copy is traced).
        shape (Sequence[int]): (H, W).
        convention (str): ``'paper'`` or ``'mmengine'``, see the module docstring.
        in_channels (int): image channels.
        data_samples: passed to an OpenMMLab model's tensor mode (mmdet detectors read the
            image meta from them); None for classifiers and segmentors.

    Returns:
        dict: ``macs`` (int), ``params`` (int), ``shape`` [H, W], ``convention``,
        ``by_operator`` (op -> MACs) and ``uncounted`` (op -> occurrences the analyzer skipped).
    """
    from mmengine.analysis import parameter_count

    if convention not in CONVENTIONS:
        raise ValueError(f'convention must be one of {list(CONVENTIONS)}, got {convention!r}')
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f'shape must be (H, W) with positive sizes, got {tuple(shape)}')
    model = copy.deepcopy(model).eval()
    params = parameter_count(model)['']
    analyzer, _ = _flop_analyzer(model, shape, convention, in_channels, data_samples)
    with torch.no_grad():
        macs = analyzer.total()
    return dict(
        macs=int(macs),
        params=int(params),
        shape=[int(s) for s in shape],
        convention=convention,
        by_operator={k: int(v) for k, v in analyzer.by_operator().items()},
        uncounted={k: int(v) for k, v in analyzer.unsupported_ops().items()})


def input_shape_of(cfg) -> Tuple[Tuple[int, int], str]:
    """(H, W) the config's test pipeline feeds the model, and where it came from.

    The last geometric transform of ``test_dataloader.dataset.pipeline`` decides: a
    ``CenterCrop`` (``crop_size``), a ``Resize`` (``scale`` is (W, H) in OpenMMLab) or a
    ``ResizeEdge`` (square approximation). Keep-ratio resizes depend on the image, so the result
    is the nominal scale; pass ``shape`` explicitly where that matters.
    """
    try:
        pipeline = cfg.test_dataloader.dataset.pipeline
    except (AttributeError, KeyError, TypeError):
        pipeline = None
    found, source = None, None
    for step in pipeline or ():
        kind = str(step.get('type', '')).split('.')[-1]
        if kind == 'CenterCrop' and step.get('crop_size') is not None:
            size = step['crop_size']
            found = (size, size) if isinstance(size, int) else (size[1], size[0])
        elif kind in ('Resize', 'RandomResize') and step.get('scale') is not None:
            scale = step['scale']
            found = (scale, scale) if isinstance(scale, int) else (scale[1], scale[0])
        elif kind == 'ResizeEdge' and step.get('scale') is not None:
            found = (step['scale'], step['scale'])
        else:
            continue
        source = f'test pipeline {kind}'
    if found is None:
        return DEFAULT_SHAPE, 'default (no size in the test pipeline)'
    return (int(found[0]), int(found[1])), source


def model_from_config(cfg) -> nn.Module:
    """Build ``cfg.model`` under the config's ``default_scope`` (mmmod imported)."""
    from mmengine.registry import MODELS, DefaultScope
    from mmengine.utils import import_modules_from_strings

    import mmmod  # noqa: F401  registers the backbones
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    scope = cfg.get('default_scope', 'mmengine')
    import_scope = {'mmpretrain': 'mmpretrain.models', 'mmseg': 'mmseg.models',
                    'mmdet': 'mmdet.models'}.get(scope)
    if import_scope:
        import_modules_from_strings([import_scope])
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') and 'data_preprocessor' not in model_cfg:
        model_cfg['data_preprocessor'] = copy.deepcopy(cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(model_cfg)


def config_complexity(cfg, shape: Optional[Sequence[int]] = None,
                      convention: str = 'paper') -> dict:
    """:func:`complexity` of a config's model at its test input size (or ``shape``)."""
    model = model_from_config(cfg)
    if shape is None:
        shape, source = input_shape_of(cfg)
    else:
        source = 'given'
    data_samples = (_det_data_samples(shape) if cfg.get('default_scope') == 'mmdet' else None)
    result = complexity(model, shape, convention, data_samples=data_samples)
    result['shape_source'] = source
    return result


def compare_with_paper(name: str, result: dict) -> Optional[dict]:
    """Our MMAC / params next to the paper's, or None where the paper gives no numbers."""
    if name not in PAPER_COMPLEXITY:
        return None
    paper_mmac, paper_params = PAPER_COMPLEXITY[name]
    mmac, params = result['macs'] / 1e6, result['params'] / 1e6
    return dict(mmac=mmac, paper_mmac=paper_mmac, mmac_rel_diff=mmac / paper_mmac - 1,
                params_m=params, paper_params_m=paper_params,
                params_rel_diff=params / paper_params - 1)


# -- gated backbones: expected MACs per image over real inputs ------------------------------------
def _gated_block_names(module: nn.Module):
    from mmmod.models.layers.gumbel_gate import GatedBlockMixin
    return [name for name, m in module.named_modules() if isinstance(m, GatedBlockMixin)]


def ungated_macs(model: nn.Module,
                 shape: Sequence[int],
                 convention: str = 'paper',
                 in_channels: int = 3,
                 data_samples=None) -> int:
    """MACs of everything in ``model`` outside its gated blocks (stem, un-gated layers, neck,
    heads) on one (1, in_channels, H, W) input, traced by mmengine's FlopAnalyzer (the gated
    blocks -- gate networks included -- are traced too and their modules' totals subtracted)."""
    if convention not in CONVENTIONS:
        raise ValueError(f'convention must be one of {list(CONVENTIONS)}, got {convention!r}')
    model = copy.deepcopy(model).eval()
    analyzer, traced = _flop_analyzer(model, shape, convention, in_channels, data_samples)
    with torch.no_grad():
        by_module = analyzer.by_module()
    blocks = _gated_block_names(traced)
    return int(by_module[''] - sum(by_module[name] for name in blocks))


def gated_complexity(model: nn.Module,
                     batches,
                     num_images: Optional[int] = None,
                     convention: str = 'paper',
                     gate_mode: Optional[str] = None,
                     tau: Optional[float] = None,
                     det_meta: bool = False) -> dict:
    """Expected MACs per image of a model with a gated backbone, averaged over real inputs.

    The gates decide per image (data-dependent gates) which channels run, so the cost is an
    expectation over inputs (Herrmann et al., S1.4):

    - gated blocks: each block's :meth:`flops` from the active channel counts of its gates on
      that image (conv MACs of the physically smaller block);
    - gate networks: each block's :meth:`gate_flops` (average pool as H*W*C plus the per-gate
      FC layers; 0 for data-independent gates, whose thresholded logits are constants),
      reported separately and included in ``macs``;
    - everything else: :func:`ungated_macs` (mmengine's FlopAnalyzer, ``convention``), traced
      once per input size.

    Inside the gated blocks only convolutions are counted (their BN / ReLU / additions are not),
    as in the paper's FLOPs calculation; ``full_macs`` counts the same way with every gate on,
    so ``macs / full_macs`` is the saving.

    Args:
        model (nn.Module): an OpenMMLab ``BaseModel`` with a gated backbone (not modified: a
            deep copy runs in eval mode).
        batches (Iterable[dict]): collated test batches (``inputs``, ``data_samples``).
        num_images (int, optional): stop after this many images; None: all batches.
        convention (str): for the un-gated part, see :func:`complexity`.
        gate_mode (str, optional), tau (float, optional): inference mode of the gates; None
            keeps the model's (the config's ``gate_mode``, default threshold 0.5).
        det_meta (bool): give the tracer mmdet data samples (detectors).

    Returns:
        dict: per image means ``macs``, ``ungated_macs``, ``gated_macs``, ``gate_net_macs``,
        ``full_macs``, ``gated_full_macs``; ``macs_min`` / ``macs_max`` over images,
        ``ratio`` (macs / full_macs), ``num_images``, ``shapes`` seen, ``gate_mode``, ``tau``,
        ``gate_rate`` (mean gate over images) and ``params``.
    """
    from mmengine.analysis import parameter_count

    from mmmod.engine.gated_model import find_gated_backbone
    from mmmod.models.layers.gumbel_gate import iter_gated_blocks

    model = copy.deepcopy(model).eval()
    backbone = find_gated_backbone(model)
    if gate_mode is not None or tau is not None:
        backbone.set_gate_mode(gate_mode or backbone.gate_mode, tau)
    blocks = [block for _, block in iter_gated_blocks(backbone)]
    ungated_cache: Dict[Tuple[int, int], int] = {}
    rows = []  # per image: (ungated, gated, gate_net, gated_full, rate)
    with torch.no_grad():
        for batch in batches:
            data = model.data_preprocessor(batch, False)
            inputs = data['inputs']  # (N, C, H, W), normalised and padded as the model sees it
            shape = tuple(int(s) for s in inputs.shape[2:])
            if shape not in ungated_cache:
                samples = _det_data_samples(shape) if det_meta else None
                ungated_cache[shape] = ungated_macs(model, shape, convention,
                                                    inputs.shape[1], samples)
            backbone(inputs)
            gated = sum(b.flops(b.active_counts()) for b in blocks)  # (N,)
            gate_net = sum(b.gate_flops() for b in blocks)
            full = sum(b.full_flops() for b in blocks)
            z = torch.cat([r.z for r in backbone.gate_records()], 1)  # (N, G) learned gates
            for i in range(inputs.shape[0]):
                rows.append((ungated_cache[shape], float(gated[i]), gate_net, full,
                             float(z[i].mean())))
                if num_images is not None and len(rows) == num_images:
                    break
            if num_images is not None and len(rows) >= num_images:
                break
    if not rows:
        raise ValueError('gated_complexity: no images in the batches')
    table = torch.tensor(rows, dtype=torch.float64)  # (images, 5)
    ungated, gated, gate_net, gated_full, rate = table.mean(0).tolist()
    per_image = table[:, 0] + table[:, 1] + table[:, 2]  # (images,)
    macs = ungated + gated + gate_net
    full_macs = ungated + gated_full
    return dict(
        macs=macs, macs_min=float(per_image.min()), macs_max=float(per_image.max()),
        ungated_macs=ungated, gated_macs=gated, gate_net_macs=gate_net,
        gated_full_macs=gated_full, full_macs=full_macs, ratio=macs / full_macs,
        gate_rate=rate, num_images=len(rows), shapes=[list(s) for s in ungated_cache],
        gate_mode=backbone.gate_mode, tau=backbone.gate_tau, convention=convention,
        params=int(parameter_count(model)['']))


def has_gated_backbone(model: nn.Module) -> bool:
    from mmmod.engine.gated_model import find_gated_backbone
    return find_gated_backbone(model, required=False) is not None


def config_gated_complexity(cfg, num_images: int = 8, convention: str = 'paper',
                            gate_mode: Optional[str] = None, tau: Optional[float] = None,
                            checkpoint: Optional[str] = None) -> dict:
    """:func:`gated_complexity` of a config's model (weights from ``checkpoint`` if given)
    over the first ``num_images`` images of its test dataloader."""
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner, load_checkpoint

    model = model_from_config(cfg)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, map_location='cpu')
    scope = cfg.get('default_scope', 'mmengine')
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    with DefaultScope.overwrite_default_scope(scope):
        dataloader = Runner.build_dataloader(loader_cfg)
        result = gated_complexity(model, dataloader, num_images, convention, gate_mode, tau,
                                  det_meta=scope == 'mmdet')
    result['checkpoint'] = checkpoint
    return result
