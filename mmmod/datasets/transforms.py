"""A pipeline check that a label map has the size of its image, and the config edit that puts
it after every ``LoadAnnotations``.

A Cityscapes label map of another size than its image (a map converted from another release,
a resized image folder) is not an error anywhere upstream: mmseg's random resize and crop
transform image and map alike, so training runs on misaligned labels, and the first sign is an
``IndexError`` in the IoU metric that names no file. The pair is known only where it is loaded:
right after ``LoadAnnotations`` the results hold ``img_path``, ``seg_map_path``, the image's
``ori_shape`` (set by ``LoadImageFromFile``, kept by every later transform) and ``gt_seg_map``
at its file's size, whatever geometric transforms ran before.

``tools/train.py`` and ``tools/test.py`` insert :class:`CheckSegMapShape` after every
``LoadAnnotations`` of the pipelines the run reads (:func:`with_seg_map_checks`, called by
:func:`mmmod.engine.runner.prepare_environment`), so stock mmseg configs are checked without
editing them; ``import mmmod`` only registers the name. In a config of your own, add
``dict(type='CheckSegMapShape')`` after ``LoadAnnotations``. The pipelines nested inside a
transform (``TestTimeAug``'s ``transforms``, i.e. ``--tta``) are not edited.
"""
import copy
from typing import Any, Iterator, List

from mmcv.transforms import BaseTransform

from mmmod.registry import TRANSFORMS

__all__ = ['CheckSegMapShape', 'with_seg_map_checks']

# The transform that loads label maps (mmseg's, and mmdet's with_seg) and the check after it.
LOADER = 'LoadAnnotations'
CHECK = 'CheckSegMapShape'


@TRANSFORMS.register_module()
class CheckSegMapShape(BaseTransform):
    """Refuse an image / label map pair of different sizes, naming both files.

    Place right after ``LoadAnnotations``. Compares ``gt_seg_map`` (H, W) with the image's
    ``ori_shape`` (H, W); results without a ``gt_seg_map`` (no label map loaded, e.g. mmdet
    boxes only), or without an image loaded before, pass unchanged.

    Required keys: ``gt_seg_map`` (optional), ``ori_shape`` (optional), ``img_path``,
    ``seg_map_path``. Modified keys: none.

    Example:
        >>> import numpy as np
        >>> check = CheckSegMapShape()
        >>> results = dict(img_path='a_leftImg8bit.png', ori_shape=(4, 8),
        ...                seg_map_path='a_gtFine_labelTrainIds.png',
        ...                gt_seg_map=np.zeros((2, 4), np.uint8))
        >>> check(results)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: label map a_gtFine_labelTrainIds.png is 2x4 (HxW) but its image ... is 4x8...
    """

    def transform(self, results: dict) -> dict:
        seg_map = results.get('gt_seg_map')
        ori_shape = results.get('ori_shape')
        if seg_map is None or ori_shape is None:
            return results
        seg_hw, img_hw = tuple(seg_map.shape[:2]), tuple(ori_shape[:2])
        if seg_hw != img_hw:
            raise ValueError(
                f'label map {results.get("seg_map_path")} is {seg_hw[0]}x{seg_hw[1]} (HxW) but '
                f'its image {results.get("img_path")} is {img_hw[0]}x{img_hw[1]}: training '
                'would run on misaligned labels. A label map must have the size of its image; '
                "regenerate it from this image's annotation (for Cityscapes, mmseg's "
                'tools/dataset_converters/cityscapes.py writes *_labelTrainIds.png), or fix '
                'data_prefix / seg_map_suffix if it pairs the wrong files.')
        return results


def _type_name(transform: Any) -> str:
    type_ = transform.get('type', '') if isinstance(transform, dict) else ''
    return getattr(type_, '__name__', str(type_)).rsplit('.', 1)[-1]


def _with_checks(pipeline: List[Any]) -> List[Any]:
    """``pipeline`` with a check after each ``LoadAnnotations`` that has none yet."""
    out = []
    for i, transform in enumerate(pipeline):
        out.append(transform)
        following = pipeline[i + 1] if i + 1 < len(pipeline) else None
        if _type_name(transform) == LOADER and _type_name(following) != CHECK:
            out.append(dict(type=CHECK))
    return out


def _pipeline_owners(dataset_cfg: Any) -> Iterator[dict]:
    """The dataset configs with a ``pipeline`` list, through wrappers (``dataset=``,
    ``datasets=[...]``; a mixing wrapper has a pipeline of its own)."""
    if not isinstance(dataset_cfg, dict):
        return
    if isinstance(dataset_cfg.get('pipeline'), (list, tuple)):
        yield dataset_cfg
    yield from _pipeline_owners(dataset_cfg.get('dataset'))
    for sub in dataset_cfg.get('datasets') or ():
        yield from _pipeline_owners(sub)


def with_seg_map_checks(cfg, dataloaders):
    """``cfg`` with :class:`CheckSegMapShape` after every ``LoadAnnotations`` in the dataset
    pipelines of ``dataloaders``; ``cfg`` itself when none needs one.

    Args:
        cfg (mmengine.Config): A full config; not modified.
        dataloaders (Sequence[str]): e.g. ``('train_dataloader', 'val_dataloader')``.

    Returns:
        mmengine.Config: A new config, or ``cfg``.

    Example:
        >>> from mmengine import Config
        >>> cfg = Config(dict(val_dataloader=dict(dataset=dict(pipeline=[
        ...     dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        ...     dict(type='PackSegInputs')]))))
        >>> new = with_seg_map_checks(cfg, ['val_dataloader'])
        >>> [t['type'] for t in new.val_dataloader.dataset.pipeline]
        ['LoadImageFromFile', 'LoadAnnotations', 'CheckSegMapShape', 'PackSegInputs']
    """
    def owners(config):
        for name in dataloaders:
            loader = config.get(name)
            if isinstance(loader, dict):
                yield from _pipeline_owners(loader.get('dataset'))

    if all(_with_checks(list(o['pipeline'])) == list(o['pipeline']) for o in owners(cfg)):
        return cfg
    cfg = copy.deepcopy(cfg)
    # val and test dataloaders may share one pipeline object: _with_checks is idempotent
    for owner in owners(cfg):
        owner['pipeline'] = _with_checks(list(owner['pipeline']))
    return cfg
