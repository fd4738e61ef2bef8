"""Fail early, and helpfully, when a config points at dataset files that are not there, or at
a dataset with no samples.

Without these checks a missing dataset surfaces deep inside the dataset class, after the model
is built, as e.g. ``AssertionError: One of ann_file ...`` or ``RuntimeError: Found 0 files``,
and an empty one as numpy's ``ValueError: need at least one array to concatenate`` (mmengine
serialising an empty data list). Here the error names the dataset type, the missing path or the
empty ann file / folder, the layout that type expects on disk, and the command that writes a
small demo dataset in that layout.

- :func:`check_dataset_paths` looks at the config only, before anything is built.
- :func:`check_datasets_not_empty` reads the data lists the way the dataset classes do; the
  tools call it when building a dataloader failed or gave no samples
  (:func:`mmmod.engine.runner.build_runner`), so a good dataset is read once, as upstream.
"""
import copy
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Tuple

__all__ = ['check_dataset_paths', 'check_datasets_not_empty', 'EmptyDatasetError']

DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')

_IMAGENET_LAYOUT = """\
  data_root/
  ├── train/n01440764/n01440764_10026.JPEG ...   one folder per class (wnid)
  ├── val/ILSVRC2012_val_00000001.JPEG ...        flat (or one folder per class)
  └── meta/
      ├── train.txt    lines "n01440764/n01440764_10026.JPEG 0"
      └── val.txt      lines "ILSVRC2012_val_00000001.JPEG 65"
  ImageNet(split='train') reads data_root/train and meta/train.txt if it exists; without the
  meta files it scans class folders, which must then be exactly the 1000 ImageNet classes."""

_CUSTOM_LAYOUT = """\
  data_root/data_prefix/
  ├── class_x/xxx.png ...   one folder per class (folder names become the classes), or
  └── 123.png ...           any files listed with labels in ann_file, lines "class_x/xxx.png 0"
  (ImageNet-style: data_prefix='train', ann_file='meta/train.txt')"""

_CITYSCAPES_LAYOUT = """\
  data_root/
  ├── leftImg8bit/{train,val}/<city>/<city>_000000_000019_leftImg8bit.png
  └── gtFine/{train,val}/<city>/<city>_000000_000019_gtFine_labelTrainIds.png
  with data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train').
  *_labelTrainIds.png (train ids 0..18, 255 = ignore) are not in the download: make them with
  mmseg's tools/dataset_converters/cityscapes.py data/cityscapes."""

_VOC_LAYOUT = """\
  data_root/  (the VOCdevkit folder)
  ├── VOC2007/
  │   ├── JPEGImages/000005.jpg
  │   ├── Annotations/000005.xml
  │   └── ImageSets/Main/{trainval,test}.txt   one image id per line
  └── VOC2012/   same, trainval only
  with ann_file='VOC2007/ImageSets/Main/trainval.txt',
  data_prefix=dict(sub_data_root='VOC2007/')."""

_GENERIC_LAYOUT = """\
  data_root must exist, and so must data_root/ann_file and data_root/<each data_prefix value>;
  see the docstring of the dataset class for the files it reads."""

# Dataset type -> (expected layout, name of the generate_data.py dataset, or None).
_LAYOUTS: Dict[str, Tuple[str, Optional[str]]] = {
    'ImageNet': (_IMAGENET_LAYOUT, 'imagenet'),
    'ImageNet21k': (_IMAGENET_LAYOUT, None),
    'CustomDataset': (_CUSTOM_LAYOUT, 'imagenet'),
    'CityscapesDataset': (_CITYSCAPES_LAYOUT, 'cityscapes'),
    'VOCDataset': (_VOC_LAYOUT, 'voc'),
}

_GENERATE = 'tools/misc/generate_data.py'


def _type_name(dataset_cfg: dict) -> str:
    """``'mmdet.VOCDataset'``, ``VOCDataset`` (a class, in pure-Python configs) -> 'VOCDataset'."""
    type_ = dataset_cfg.get('type', '?')
    name = getattr(type_, '__name__', str(type_))
    return name.rsplit('.', 1)[-1]


def _leaf_datasets(dataset_cfg: Any, where: str) -> Iterator[Tuple[str, dict]]:
    """Yield ``(where, cfg)`` of each real dataset under wrappers such as ``RepeatDataset``
    (``dataset=``) and ``ConcatDataset`` (``datasets=[...]``)."""
    if not isinstance(dataset_cfg, dict):  # ConfigDict is a dict; built objects are skipped
        return
    if isinstance(dataset_cfg.get('datasets'), (list, tuple)):
        for i, sub in enumerate(dataset_cfg['datasets']):
            yield from _leaf_datasets(sub, f'{where}.datasets[{i}]')
    elif isinstance(dataset_cfg.get('dataset'), dict):
        yield from _leaf_datasets(dataset_cfg['dataset'], f'{where}.dataset')
    else:
        yield where, dataset_cfg


def _is_remote(path: str) -> bool:
    # s3://, http://, ... are read through a file backend; only local paths can be checked.
    return '://' in path


def _join(data_root: str, path: str) -> str:
    # As mmengine's BaseDataset._join_prefix: relative paths hang off data_root.
    return path if osp.isabs(path) or not data_root else osp.join(data_root, path)


def _required_paths(dataset_cfg: dict) -> List[Tuple[str, str]]:
    """``(what, path)`` pairs a dataset config needs on disk, outermost first."""
    data_root = dataset_cfg.get('data_root') or ''
    paths = [('data_root', data_root)] if data_root else []
    ann_file = dataset_cfg.get('ann_file') or ''
    if ann_file:
        paths.append(('ann_file', _join(data_root, ann_file)))
    prefix = dataset_cfg.get('data_prefix') or ''
    if not prefix and _type_name(dataset_cfg).startswith('ImageNet'):
        # mmpretrain's ImageNet(split='train') reads data_root/train.
        prefix = dataset_cfg.get('split') or ''
    prefixes = prefix.items() if isinstance(prefix, dict) else [('', prefix)]
    for key, value in prefixes:
        if isinstance(value, str) and value:
            paths.append((f'data_prefix.{key}' if key else 'data_prefix', _join(data_root, value)))
    return [(what, path) for what, path in paths if not _is_remote(path)]


def _demo_command(name: str, data_root: str) -> str:
    if name == 'voc':
        # make_voc writes OUT_DIR/VOCdevkit, and data_root is that VOCdevkit folder.
        root = data_root.rstrip('/\\')
        out = osp.dirname(root) if osp.basename(root) == 'VOCdevkit' else root
        return f'python {_GENERATE} voc {out or "."}'
    return f'python {_GENERATE} {name} {data_root or "data/" + name}'


def check_dataset_paths(cfg: Any) -> List[str]:
    """Check that the local files the dataloaders' datasets read exist.

    Walks ``train_dataloader``, ``val_dataloader`` and ``test_dataloader`` (those present and
    not None), descends through dataset wrappers (``dataset=``, ``datasets=[...]``), and for each
    dataset checks ``data_root``, ``data_root/ann_file`` and every ``data_root/<data_prefix>``
    (``data_root/<split>`` for ImageNet). Remote paths (``s3://...``) are not checked.

    Args:
        cfg (mmengine.Config | dict): A full training/testing config.

    Returns:
        list[str]: The paths that were checked and exist, in the order visited.

    Raises:
        FileNotFoundError: If any path is missing. The message lists every dataset with a
            missing path, its type and config location, the layout each such type expects, and
            the ``tools/misc/generate_data.py`` command that writes a demo dataset.

    Example:
        >>> from mmengine import Config
        >>> cfg = Config(dict(val_dataloader=dict(dataset=dict(
        ...     type='ImageNet', data_root='data/nowhere', split='val'))))
        >>> check_dataset_paths(cfg)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: ImageNet at val_dataloader.dataset: data_root not found: data/nowhere ...
        ...
    """
    found = []
    # (type, what, path) -> config locations; val and test often share one dataset config.
    missing: Dict[Tuple[str, str, str], List[str]] = {}
    root_by_type: Dict[str, str] = {}
    for loader_key in DATALOADERS:
        loader = cfg.get(loader_key)
        if not isinstance(loader, dict):
            continue
        for where, dataset_cfg in _leaf_datasets(loader.get('dataset'), f'{loader_key}.dataset'):
            for what, path in _required_paths(dataset_cfg):
                if osp.exists(path):
                    found.append(path)
                    continue
                type_name = _type_name(dataset_cfg)
                missing.setdefault((type_name, what, path), []).append(where)
                root_by_type.setdefault(type_name, dataset_cfg.get('data_root') or '')
                break  # only the outermost missing path: what lies under it is missing too
    if missing:
        raise FileNotFoundError(_message(missing, root_by_type))
    return found


def _message(missing: Dict[Tuple[str, str, str], List[str]],
             root_by_type: Dict[str, str]) -> str:
    lines = []
    for (type_name, what, path), wheres in missing.items():
        resolved = '' if osp.isabs(path) else f' (resolved: {osp.abspath(path)})'
        lines.append(f'{type_name} at {", ".join(wheres)}: {what} not found: {path}{resolved}')
    return '\n'.join(lines + _layout_help(root_by_type))


def _layout_help(root_by_type: Dict[str, str]) -> List[str]:
    """The expected layout of each dataset type, and the demo-data commands (message lines)."""
    lines, demos = [], []
    for type_name, data_root in root_by_type.items():
        layout, demo = _LAYOUTS.get(type_name, (_GENERIC_LAYOUT, None))
        lines += ['', f'Expected on-disk layout of {type_name}:', layout]
        if demo:
            demos.append(_demo_command(demo, data_root))
    lines.append('')
    if demos:
        lines.append('To try the pipeline without the real data, write a small demo dataset '
                     'in the same layout:')
        lines += [f'  {cmd}' for cmd in demos]
    else:
        lines.append(f'For a small demo dataset (imagenet, cityscapes or voc layout) see '
                     f'{_GENERATE} --help.')
    return lines


# ---------------------------------------------------------------------------------------------
# Empty datasets
# ---------------------------------------------------------------------------------------------
class EmptyDatasetError(ValueError):
    """A dataset a run reads has no samples (a ``ValueError``, as mmengine's error was)."""


def _has_files(folder: str) -> bool:
    """Whether any file lies under ``folder`` (stops at the first one)."""
    return any(files for _, _, files in os.walk(folder))


def _is_blank(path: str, chunk: int = 1 << 16) -> bool:
    """Whether the file at ``path`` holds only whitespace (reads up to its first character);
    False if it cannot be read."""
    try:
        with open(path, 'rb') as f:
            while True:
                block = f.read(chunk)
                if not block:
                    return True
                if block.strip():
                    return False
    except OSError:
        return False


def _local_dir(path: Any) -> bool:
    return isinstance(path, str) and bool(path) and not _is_remote(path) and osp.isdir(path)


def _without_files(folders: List[Tuple[str, str]]) -> Optional[str]:
    """'data_prefix.img_path DIR holds no files' for the folders without any file, or None."""
    empty = [f'{what} {path}' for what, path in folders if not _has_files(path)]
    if not empty:
        return None
    return f'{" and ".join(empty)} {"holds" if len(empty) == 1 else "hold"} no files'


def _empty_reason(dataset_cfg: dict) -> Optional[str]:
    """Why the dataset of ``dataset_cfg`` has no samples, or None if it has some (or cannot be
    read here: then the build's own error stands).

    The dataset is built with ``lazy_init=True`` in the current default scope and its data list
    read and filtered as mmengine's ``BaseDataset.full_init`` does (``load_data_list``, then
    ``filter_data``).
    """
    from mmengine.dataset import BaseDataset
    from mmengine.registry import DATASETS
    try:
        dataset = DATASETS.build(dict(copy.deepcopy(dataset_cfg), lazy_init=True))
    except Exception:  # e.g. a class without lazy_init: nothing to tell beyond the build error
        return None
    if not isinstance(dataset, BaseDataset):
        return None
    ann_file = dataset.ann_file
    # mmseg joins an empty ann_file to data_root, a folder: it then scans the img_path folder.
    if not isinstance(ann_file, str) or not ann_file or _is_remote(ann_file) or \
            osp.isdir(ann_file):
        ann_file = ''
    prefixes = dataset.data_prefix if isinstance(dataset.data_prefix, dict) else {}
    folders = [(f'data_prefix.{key}', path) for key, path in prefixes.items() if _local_dir(path)]
    try:
        data_list = dataset.load_data_list()
    except Exception:
        # Some classes refuse to read nothing themselves (mmpretrain's CustomDataset: "Found 0
        # files"; ImageNet: 0 class folders for 1000 classes): empty if nothing is on disk.
        if ann_file:
            return f'ann_file {ann_file} is empty' if _is_blank(ann_file) else None
        return _without_files(folders)
    if not data_list:
        if ann_file:
            return f'ann_file {ann_file} lists no samples'
        suffix = getattr(dataset, 'img_suffix', None)  # mmseg scans img_path for it
        reads = f' (it reads *{suffix})' if isinstance(suffix, str) and suffix else ''
        return _without_files(folders) or (
            f'{" and ".join(f"{what} {path}" for what, path in folders) or "data_prefix"} '
            f'give no file the dataset reads{reads}')
    dataset.data_list = data_list
    try:
        kept = dataset.filter_data()
    except Exception:
        return None
    if not kept:
        source = f'ann_file {ann_file}' if ann_file else ', '.join(path for _, path in folders)
        return (f'filter_cfg={dataset.filter_cfg!r} removed all {len(data_list)} samples read '
                f'from {source}')
    return None


def check_datasets_not_empty(dataset_cfg: Any, where: str = 'dataset') -> None:
    """Raise :class:`EmptyDatasetError` when a dataset under ``dataset_cfg`` has no samples.

    Descends through dataset wrappers (``dataset=``, ``datasets=[...]``) like
    :func:`check_dataset_paths`, builds each dataset lazily in the current default scope
    (``mmengine.registry.init_default_scope``; the Runner sets it) and reads its data list as
    ``BaseDataset.full_init`` does. A dataset is empty when its ann file lists no samples, its
    folders hold no file it reads, or its ``filter_cfg`` removes every sample. Reading the data
    lists again costs time, so the tools call this only when building a dataloader failed or gave
    no samples.

    Args:
        dataset_cfg (dict): A dataloader's ``dataset`` config.
        where (str): Its place in the config, for the message (``train_dataloader.dataset``).

    Raises:
        EmptyDatasetError: naming each empty dataset's type, place and ann file or folder, with
            the layout its type expects and the command that writes demo data.
    """
    lines: List[str] = []
    root_by_type: Dict[str, str] = {}
    for leaf_where, leaf_cfg in _leaf_datasets(dataset_cfg, where):
        reason = _empty_reason(leaf_cfg)
        if reason is None:
            continue
        type_name = _type_name(leaf_cfg)
        lines.append(f'{type_name} at {leaf_where} is empty: {reason}')
        root_by_type.setdefault(type_name, leaf_cfg.get('data_root') or '')
    if lines:
        lines.append('A run needs at least one sample in every dataset it reads.')
        raise EmptyDatasetError('\n'.join(lines + _layout_help(root_by_type)))
