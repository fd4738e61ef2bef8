"""A random batch with ground truth for any mmpretrain / mmseg / mmdet model, for timing.

Timing a training step needs ``mode='loss'`` inputs; timing inference needs ``'predict'``
inputs with the meta information the heads read (image shape, scale factor). The content is
random: only shapes matter for speed.
"""
import torch


def model_library(model) -> str:
    """'mmpretrain', 'mmseg' or 'mmdet', from the class of a built model."""
    module = type(model).__module__.split('.')[0]
    if module not in ('mmpretrain', 'mmseg', 'mmdet'):
        raise TypeError(f'{type(model).__name__} from {module!r}: expected a model of '
                        "mmpretrain, mmseg or mmdet")
    return module


def random_batch(model, batch_size: int = 1, shape=(224, 224), seed: int = 0) -> dict:
    """An unprocessed data batch (``inputs`` uint8 (3, H, W) images + data samples with
    ground truth) for ``model.data_preprocessor``.

    Returns:
        dict: ``dict(inputs=[...], data_samples=[...])`` as the dataloaders yield it.
    """
    lib = model_library(model)
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    if lib == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        num_classes = getattr(getattr(model, 'roi_head', None), 'bbox_head', None)
        num_classes = getattr(num_classes, 'num_classes', 20)
        return demo_mm_inputs(batch_size, [(3, h, w)] * batch_size, num_items=[3] * batch_size,
                              num_classes=num_classes)
    inputs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
              for _ in range(batch_size)]
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0))
    if lib == 'mmseg':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        num_classes = model.decode_head.num_classes
        samples = []
        for _ in range(batch_size):
            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(
                data=torch.randint(0, num_classes, (1, h, w), generator=g))
            samples.append(sample)
        return dict(inputs=inputs, data_samples=samples)
    from mmpretrain.structures import DataSample
    num_classes = getattr(getattr(model, 'head', None), 'num_classes', 1000)
    samples = [DataSample(metainfo=meta).set_gt_label(
        int(torch.randint(0, num_classes, (1, ), generator=g))) for _ in range(batch_size)]
    return dict(inputs=inputs, data_samples=samples)
