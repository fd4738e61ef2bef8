"""Small synthetic datasets written in the real on-disk formats.

Each ``make_*`` function writes a handful of images plus annotations in exactly the layout the
standard dataset class reads, and returns the path to give that class as ``data_root``:

==========================  ======================================  ============================
generator                   read by                                 config
==========================  ======================================  ============================
:func:`make_imagenet`       ``mmpretrain.datasets.ImageNet``        ``data_root=..., split=...``
:func:`make_cityscapes`     ``mmseg.datasets.CityscapesDataset``    mmseg ``cityscapes.py``
:func:`make_voc`            ``mmdet.datasets.VOCDataset``           mmdet ``voc0712.py``
:func:`make_svhn`           :class:`mmmod.datasets.SVHN`            ``data_root=..., split=...``
:func:`make_cifar10`        :class:`mmmod.datasets.SafeCIFAR10`     ``verify_md5=False``
:func:`make_cifar100`       :class:`mmmod.datasets.SafeCIFAR100`    ``verify_md5=False``
==========================  ======================================  ============================

The content is synthetic but learnable: every class has its own colour (and, for ImageNet, its
own stripe orientation; CIFAR-100's classes are 10 hues times 10 orientations), so a model can
fit it in a few iterations and a smoke test can tell a working pipeline from a broken one.
Everything is drawn from ``numpy.random.default_rng(seed)``, so the same arguments write
byte-identical files. Existing files with the same names are overwritten; other files under
``root`` are left alone.

All ``image_size`` arguments are ``(H, W)``. Only numpy and Pillow are needed (and scipy, which
writes SVHN's MATLAB files): the generators do not import mmpretrain, mmseg or mmdet. The CIFAR
files are python pickles in the official layout but not the official bytes: mmpretrain's
``CIFAR10`` refuses them (md5); :class:`mmmod.datasets.SafeCIFAR10` reads them with
``verify_md5=False``.
"""
import colorsys
import os
import os.path as osp
import pickle
import xml.etree.ElementTree as ET
from typing import Callable, Dict, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    'make_imagenet', 'make_cityscapes', 'make_voc', 'make_svhn', 'make_cifar10', 'make_cifar100',
    'GENERATORS'
]

PathLike = Union[str, os.PathLike]

# The first ILSVRC-2012 synsets in label order (label i <-> wnid i <-> mmpretrain's
# IMAGENET_CATEGORIES[i]): tench, goldfish, great white shark, tiger shark, hammerhead,
# electric ray, stingray, cock, hen, ostrich.
IMAGENET_WNIDS = ('n01440764', 'n01443537', 'n01484850', 'n01491361', 'n01494475',
                  'n01496331', 'n01498041', 'n01514668', 'n01514859', 'n01518878')

# Cityscapes classes by train id: (labelId, RGB colour), as in cityscapesscripts' labels.py.
# train id 255 (ignore) is written as labelId 1, "ego vehicle": the car hood at the bottom.
CITYSCAPES_TRAIN_IDS = (
    (7, (128, 64, 128)),   # 0 road
    (8, (244, 35, 232)),   # 1 sidewalk
    (11, (70, 70, 70)),    # 2 building
    (12, (102, 102, 156)),  # 3 wall
    (13, (190, 153, 153)),  # 4 fence
    (17, (153, 153, 153)),  # 5 pole
    (19, (250, 170, 30)),  # 6 traffic light
    (20, (220, 220, 0)),   # 7 traffic sign
    (21, (107, 142, 35)),  # 8 vegetation
    (22, (152, 251, 152)),  # 9 terrain
    (23, (70, 130, 180)),  # 10 sky
    (24, (220, 20, 60)),   # 11 person
    (25, (255, 0, 0)),     # 12 rider
    (26, (0, 0, 142)),     # 13 car
    (27, (0, 0, 70)),      # 14 truck
    (28, (0, 60, 100)),    # 15 bus
    (31, (0, 80, 100)),    # 16 train
    (32, (0, 0, 230)),     # 17 motorcycle
    (33, (119, 11, 32)),   # 18 bicycle
)
CITYSCAPES_IGNORE = 255
CITYSCAPES_EGO_VEHICLE_LABEL_ID = 1
CITYSCAPES_CITIES = dict(train=('aachen', 'bremen'), val=('frankfurt', 'lindau'))
# Train ids the street scene is drawn from.
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = 0, 1, 2, 5, 7, 8, 10, 11, 13

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
               'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')


def _check_size(image_size: Tuple[int, int], min_size: int) -> Tuple[int, int]:
    h, w = (int(s) for s in image_size)
    if h < min_size or w < min_size:
        raise ValueError(f'image_size must be (H, W) with both >= {min_size}, got {image_size}')
    return h, w


def _save(array: np.ndarray, path: str, **save_kwargs) -> None:
    """Write ``array`` ((H, W, 3) RGB or (H, W) single-channel uint8) to ``path``."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **save_kwargs)


def _write_lines(path: str, lines: Sequence[str]) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(''.join(f'{line}\n' for line in lines))


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# ImageNet
# ---------------------------------------------------------------------------------------------
def _imagenet_image(rng: np.random.Generator, label: int, num_classes: int,
                    size: Tuple[int, int]) -> np.ndarray:
    """A (H, W, 3) uint8 image whose hue and stripe orientation are set by ``label``."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)  # (H, W) each, in [0, 1)
    theta = np.pi * label / num_classes
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * (xx * np.cos(theta) + yy * np.sin(theta))
                                 + phase)  # (H, W)
    colour = np.array(colorsys.hsv_to_rgb(label / num_classes, 0.8, 0.9)) * 255  # (3,)
    brightness = rng.uniform(0.6, 1.0)
    img = (0.35 + 0.65 * stripes[..., None]) * colour * brightness  # (H, W, 3)
    return _to_uint8(img + rng.normal(0, 8, img.shape))


def make_imagenet(root: PathLike,
                  num_classes: int = 4,
                  num_train_per_class: int = 4,
                  num_val_per_class: int = 2,
                  image_size: Tuple[int, int] = (64, 64),
                  seed: int = 0) -> str:
    """Write a tiny ImageNet-1k in the layout ``mmpretrain.datasets.ImageNet`` reads.

    Layout (``ImageNet(data_root=root, split='train' | 'val')`` resolves ``data_prefix`` to the
    split folder and picks up ``meta/<split>.txt`` as ``ann_file`` when it exists)::

        root/
        ├── train/n01440764/n01440764_1.JPEG  ...  one folder per wnid
        ├── val/ILSVRC2012_val_00000001.JPEG  ...  flat, classes shuffled
        └── meta/
            ├── train.txt   # "n01440764/n01440764_1.JPEG 0"
            └── val.txt     # "ILSVRC2012_val_00000001.JPEG 3"

    Class ``i`` is the real ILSVRC-2012 synset with label ``i`` (``n01440764`` = 0 = tench, ...),
    so labels index mmpretrain's 1000 ``IMAGENET_CATEGORIES`` correctly. The annotation files
    are required: without them ``ImageNet`` falls back to one-folder-per-class scanning, which
    asserts that there are exactly 1000 folders.

    Args:
        root: Directory to write into (the ``data_root``).
        num_classes: Number of classes, at most ``len(IMAGENET_WNIDS)`` (10).
        num_train_per_class: Training images per class.
        num_val_per_class: Validation images per class.
        image_size: ``(H, W)`` of every image.
        seed: Seed of the random content.

    Returns:
        str: ``root``, the ``data_root`` to configure.
    """
    if not 1 <= num_classes <= len(IMAGENET_WNIDS):
        raise ValueError(f'num_classes must be in [1, {len(IMAGENET_WNIDS)}] (the synsets '
                         f'known to this generator), got {num_classes}')
    size = _check_size(image_size, 8)
    root = os.fspath(root)
    rng = np.random.default_rng(seed)

    train_lines = []
    for label, wnid in enumerate(IMAGENET_WNIDS[:num_classes]):
        for k in range(num_train_per_class):
            name = f'{wnid}/{wnid}_{k + 1}.JPEG'
            _save(_imagenet_image(rng, label, num_classes, size), osp.join(root, 'train', name),
                  quality=95)
            train_lines.append(f'{name} {label}')

    # The real val set is one flat folder in random class order; shuffle so that a reader
    # which ignores val.txt cannot get the labels right by accident.
    val_labels = rng.permutation(np.repeat(np.arange(num_classes), num_val_per_class))
    val_lines = []
    for n, label in enumerate(val_labels.tolist(), start=1):
        name = f'ILSVRC2012_val_{n:08d}.JPEG'
        _save(_imagenet_image(rng, label, num_classes, size), osp.join(root, 'val', name),
              quality=95)
        val_lines.append(f'{name} {label}')

    _write_lines(osp.join(root, 'meta', 'train.txt'), train_lines)
    _write_lines(osp.join(root, 'meta', 'val.txt'), val_lines)
    return root


# ---------------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------------
def _street_scene(rng: np.random.Generator, size: Tuple[int, int]) -> np.ndarray:
    """A (H, W) uint8 train-id map: sky, buildings/trees, sidewalk, road, cars, people, poles
    with signs, and the ego-vehicle hood (ignore, 255) along the bottom edge."""
    h, w = size
    seg = np.full((h, w), SKY, dtype=np.uint8)
    horizon, kerb, hood = int(0.5 * h), int(0.58 * h), int(0.9 * h)

    x = 0
    while x < w:  # a skyline of buildings and trees
        bw = int(rng.integers(max(2, w // 8), max(3, w // 4)))
        top = int(rng.integers(int(0.05 * h), int(0.3 * h) + 1))
        seg[top:horizon, x:x + bw] = VEGETATION if rng.random() < 0.3 else BUILDING
        x += bw
    seg[horizon:kerb] = SIDEWALK
    seg[kerb:hood] = ROAD
    seg[hood:] = CITYSCAPES_IGNORE

    for _ in range(int(rng.integers(1, 3))):  # poles carrying a sign
        px = int(rng.integers(0, w - 2))
        seg[int(0.25 * h):kerb, px:px + 2] = POLE
        seg[int(0.2 * h):int(0.28 * h), max(0, px - 3):px + 5] = SIGN
    for _ in range(int(rng.integers(1, 3))):  # people on the sidewalk
        px, ph = int(rng.integers(0, w - 4)), max(3, int(0.15 * h))
        seg[kerb - ph:kerb, px:px + max(2, w // 64)] = PERSON
    for _ in range(int(rng.integers(1, 4))):  # cars on the road
        cw, ch = int(rng.integers(w // 10, w // 5 + 1)), int(rng.integers(h // 10, h // 6 + 1))
        cx, cy = int(rng.integers(0, w - cw)), int(rng.integers(kerb, hood - ch))
        seg[cy:cy + ch, cx:cx + cw] = CAR
    return seg


def _render_scene(rng: np.random.Generator, seg: np.ndarray) -> np.ndarray:
    """A (H, W, 3) uint8 image painting each train id of ``seg`` (H, W) in its class colour."""
    lut = np.zeros((256, 3), dtype=np.float64)
    lut[:len(CITYSCAPES_TRAIN_IDS)] = [colour for _, colour in CITYSCAPES_TRAIN_IDS]
    lut[CITYSCAPES_IGNORE] = (30, 30, 30)  # dark hood
    img = lut[seg] * rng.uniform(0.8, 1.1)  # (H, W, 3), one exposure per image
    return _to_uint8(img + rng.normal(0, 8, img.shape))


def make_cityscapes(root: PathLike,
                    num_train: int = 2,
                    num_val: int = 2,
                    image_size: Tuple[int, int] = (128, 256),
                    seed: int = 0) -> str:
    """Write a tiny Cityscapes in the layout ``mmseg.datasets.CityscapesDataset`` reads.

    Layout (mmseg's ``cityscapes.py`` config: ``data_prefix=dict(img_path='leftImg8bit/train',
    seg_map_path='gtFine/train')``; images are found by scanning for the suffix)::

        root/
        ├── leftImg8bit/{train,val}/<city>/<city>_000000_<frame>_leftImg8bit.png   (H, W, 3)
        └── gtFine/{train,val}/<city>/
            ├── <city>_000000_<frame>_gtFine_labelTrainIds.png  (H, W) 0..18, 255 = ignore
            └── <city>_000000_<frame>_gtFine_labelIds.png       (H, W) official label ids

    ``labelTrainIds`` is what training reads (normally made by mmseg's
    ``tools/dataset_converters/cityscapes.py``); ``labelIds`` is what ``CityscapesMetric`` reads.
    Images are spread round-robin over two cities per split.

    Args:
        root: Directory to write into (the ``data_root``).
        num_train: Number of training images.
        num_val: Number of validation images.
        image_size: ``(H, W)`` of every image and map; at least 32 each.
        seed: Seed of the random content.

    Returns:
        str: ``root``, the ``data_root`` to configure.
    """
    size = _check_size(image_size, 32)
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    train_to_label_id = np.full(256, CITYSCAPES_EGO_VEHICLE_LABEL_ID, dtype=np.uint8)
    train_to_label_id[:len(CITYSCAPES_TRAIN_IDS)] = [lid for lid, _ in CITYSCAPES_TRAIN_IDS]

    for split, num in (('train', num_train), ('val', num_val)):
        cities = CITYSCAPES_CITIES[split]
        for i in range(num):
            city = cities[i % len(cities)]
            stem = osp.join(city, f'{city}_000000_{i:06d}')
            seg = _street_scene(rng, size)
            _save(_render_scene(rng, seg), osp.join(root, 'leftImg8bit', split,
                                                    f'{stem}_leftImg8bit.png'))
            gt = osp.join(root, 'gtFine', split, stem)
            _save(seg, f'{gt}_gtFine_labelTrainIds.png')
            _save(train_to_label_id[seg], f'{gt}_gtFine_labelIds.png')
    return root


# ---------------------------------------------------------------------------------------------
# Pascal VOC
# ---------------------------------------------------------------------------------------------
def _voc_colour(label: int) -> Tuple[int, int, int]:
    """The VOC palette colour of class ``label`` (0-based; the palette's 0 is background)."""
    # The devkit's bit-interleaved colour map: bits of the index go to R, G, B in turn.
    c, rgb = label + 1, [0, 0, 0]
    for shift in range(7, -1, -1):
        for ch in range(3):
            rgb[ch] |= ((c >> ch) & 1) << shift
        c >>= 3
    return tuple(rgb)


def _voc_image(rng: np.random.Generator, size: Tuple[int, int]
               ) -> Tuple[np.ndarray, list]:
    """A (H, W, 3) uint8 image with 1-3 boxes drawn on it, and their objects as
    ``(class_name, (xmin, ymin, xmax, ymax))`` in VOC's 1-based inclusive pixel coordinates."""
    h, w = size
    # background gradient colours, (3,) each, brighter than the outlines
    top, bottom = rng.uniform(100, 220, size=(2, 3))
    t = np.linspace(0, 1, h)[:, None, None]  # (H, 1, 1)
    background = (1 - t) * top + t * bottom + rng.normal(0, 6, (h, w, 3))  # (H, W, 3)
    img = Image.fromarray(_to_uint8(background))
    draw = ImageDraw.Draw(img)

    objects = []
    for _ in range(int(rng.integers(1, 4))):
        label = int(rng.integers(len(VOC_CLASSES)))
        bw, bh = int(rng.integers(w // 6, w // 2 + 1)), int(rng.integers(h // 6, h // 2 + 1))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        # Pixels x0..x0+bw-1 (0-based) are the box; outline it so overlapping boxes stay visible.
        draw.rectangle((x0, y0, x0 + bw - 1, y0 + bh - 1), fill=_voc_colour(label),
                       outline=(0, 0, 0), width=2)
        objects.append((VOC_CLASSES[label], (x0 + 1, y0 + 1, x0 + bw, y0 + bh)))
    return np.asarray(img), objects


def _voc_xml(year: str, img_id: str, size: Tuple[int, int], objects: list) -> ET.ElementTree:
    """An ``Annotations/<id>.xml`` tree with the fields of the VOC devkit's files."""
    h, w = size
    ann = ET.Element('annotation')

    def sub(parent, tag, text=None):
        node = ET.SubElement(parent, tag)
        if text is not None:
            node.text = str(text)
        return node

    sub(ann, 'folder', f'VOC{year}')
    sub(ann, 'filename', f'{img_id}.jpg')
    sub(sub(ann, 'source'), 'database', f'mmmod synthetic VOC{year}')
    size_node = sub(ann, 'size')
    sub(size_node, 'width', w)
    sub(size_node, 'height', h)
    sub(size_node, 'depth', 3)
    sub(ann, 'segmented', 0)
    for name, box in objects:
        obj = sub(ann, 'object')
        sub(obj, 'name', name)
        sub(obj, 'pose', 'Unspecified')
        sub(obj, 'truncated', 0)
        sub(obj, 'difficult', 0)
        bndbox = sub(obj, 'bndbox')
        for tag, value in zip(('xmin', 'ymin', 'xmax', 'ymax'), box):
            sub(bndbox, tag, value)
    tree = ET.ElementTree(ann)
    ET.indent(tree, space='\t')
    return tree


def make_voc(root: PathLike,
             num_trainval: int = 4,
             num_test: int = 2,
             years: Sequence[str] = ('2007', '2012'),
             image_size: Tuple[int, int] = (200, 300),
             seed: int = 0) -> str:
    """Write a tiny Pascal VOC in the layout ``mmdet.datasets.VOCDataset`` reads.

    Layout (mmdet's ``voc0712.py`` config: ``data_root='.../VOCdevkit/'``,
    ``ann_file='VOC2007/ImageSets/Main/trainval.txt'``,
    ``data_prefix=dict(sub_data_root='VOC2007/')``)::

        root/VOCdevkit/
        ├── VOC2007/
        │   ├── JPEGImages/000001.jpg           (H, W, 3)
        │   ├── Annotations/000001.xml          size, objects: name, difficult, bndbox
        │   └── ImageSets/Main/{trainval,test}.txt   one image id per line
        └── VOC2012/                            trainval only, ids like 2012_000001
            └── ...

    Boxes are written in VOC's 1-based inclusive pixel coordinates (mmdet subtracts 1 on
    reading), every object has ``difficult=0``. Only VOC2007 gets a test split, as in the real
    data (VOC2012's test set was never released), so ``num_test`` is ignored without '2007'.

    Args:
        root: Directory to write ``VOCdevkit/`` into.
        num_trainval: Images in each year's ``trainval`` split.
        num_test: Images in VOC2007's ``test`` split.
        years: Which of ``'2007'`` and ``'2012'`` to write.
        image_size: ``(H, W)`` of every image; at least 32 each.
        seed: Seed of the random content.

    Returns:
        str: ``root/VOCdevkit``, the ``data_root`` to configure.
    """
    size = _check_size(image_size, 32)
    unknown = set(years) - {'2007', '2012'}
    if unknown:
        raise ValueError(f"years must be a subset of ('2007', '2012'), got {tuple(years)}")
    devkit = osp.join(os.fspath(root), 'VOCdevkit')

    for year in years:
        # One stream per year: VOC2007 comes out the same whether or not VOC2012 is written.
        rng = np.random.default_rng([seed, int(year)])
        voc = osp.join(devkit, f'VOC{year}')
        splits = [('trainval', num_trainval)] + ([('test', num_test)] if year == '2007' else [])
        start = 1
        for split, num in splits:
            ids = [f'{n:06d}' if year == '2007' else f'{year}_{n:06d}'
                   for n in range(start, start + num)]
            start += num
            for img_id in ids:
                img, objects = _voc_image(rng, size)
                _save(img, osp.join(voc, 'JPEGImages', f'{img_id}.jpg'), quality=95)
                xml_path = osp.join(voc, 'Annotations', f'{img_id}.xml')
                os.makedirs(osp.dirname(xml_path), exist_ok=True)
                _voc_xml(year, img_id, size, objects).write(xml_path)
            _write_lines(osp.join(voc, 'ImageSets', 'Main', f'{split}.txt'), ids)
    return devkit


# ---------------------------------------------------------------------------------------------
# SVHN
# ---------------------------------------------------------------------------------------------
SVHN_PARTS = ('train', 'test', 'extra')
# A MAT-file v5 header's 116 bytes of text (scipy writes the creation time there).
SVHN_MAT_HEADER = b'MATLAB 5.0 MAT-file, written by mmmod.datasets.make_svhn'.ljust(116)


def make_svhn(root: PathLike,
              num_images: Union[int, Sequence[int]] = (20, 10, 10),
              seed: int = 0) -> str:
    """Write SVHN's format-2 files (``mmmod.datasets.SVHN``) with synthetic 32x32 digits.

    Layout, as downloaded from ufldl.stanford.edu/housenumbers::

        root/
        ├── train_32x32.mat    X: (32, 32, 3, N) uint8, y: (N, 1) uint8 in 1..10
        ├── test_32x32.mat
        └── extra_32x32.mat

    Label 10 is the digit 0, as in the real files. Digit d looks like ImageNet class d of
    :func:`make_imagenet` at 32x32 (its own hue and stripe orientation).

    Args:
        root: Directory to write the three files into.
        num_images: Images of (train, test, extra), or one count for all three.
        seed: Seed of the random content.

    Returns:
        str: ``root``, the ``data_root`` to configure.
    """
    from scipy.io import savemat
    counts = (num_images, ) * 3 if isinstance(num_images, int) else tuple(num_images)
    if len(counts) != 3 or any(n < 1 for n in counts):
        raise ValueError(f'num_images must be one count >= 1 or three (train, test, extra), '
                         f'got {num_images!r}')
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    for index, (part, num) in enumerate(zip(SVHN_PARTS, counts)):
        rng = np.random.default_rng([seed, index])
        digits = np.arange(num) % 10  # every digit, in turn
        images = np.stack([_imagenet_image(rng, int(d), 10, (32, 32)) for d in digits],
                          axis=-1)  # (32, 32, 3, N)
        labels = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]  # (N, 1)
        path = osp.join(root, f'{part}_32x32.mat')
        savemat(path, dict(X=images, y=labels))
        with open(path, 'r+b') as f:  # the header's text carries the time: make it fixed
            f.write(SVHN_MAT_HEADER)
    return root


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# ---------------------------------------------------------------------------------------------
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                   'ship', 'truck')
# The fine classes in label order (alphabetical), as in the official meta file.
CIFAR100_CLASSES = tuple("""
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain
    mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain
    plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
    skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank
    telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf
    woman worm""".split())
CIFAR100_SUPERCLASSES = tuple("""
    aquatic_mammals fish flowers food_containers fruit_and_vegetables
    household_electrical_devices household_furniture insects large_carnivores
    large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores
    medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1
    vehicles_2""".split())
# fine label -> coarse label (index into CIFAR100_SUPERCLASSES), five fine classes each.
CIFAR100_COARSE = (4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
                   6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
                   5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
                   10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
                   16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)
CIFAR10_TRAIN_BATCHES = 5  # data_batch_1..5, as in the official archive


def _cifar_image(rng: np.random.Generator, label: int, num_classes: int) -> np.ndarray:
    """A (32, 32, 3) uint8 image: hue from ``label % 10``, stripe orientation from
    ``label // 10``, so CIFAR-100's classes differ in one or the other (CIFAR-10: in hue)."""
    rows = -(-num_classes // 10)  # groups of 10 hues
    yy, xx = np.mgrid[0:32, 0:32] / 32  # (32, 32) each, in [0, 1)
    theta = np.pi * (label // 10) / rows
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * (xx * np.cos(theta) + yy * np.sin(theta))
                                 + phase)  # (32, 32)
    colour = np.array(colorsys.hsv_to_rgb((label % 10) / 10, 0.8, 0.9)) * 255  # (3,)
    img = (0.35 + 0.65 * stripes[..., None]) * colour * rng.uniform(0.6, 1.0)  # (32, 32, 3)
    return _to_uint8(img + rng.normal(0, 8, img.shape))


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) RGB -> (N, 3072) rows: 1024 R, 1024 G, 1024 B values, row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _dump(entry: dict, path: str) -> None:
    # Protocol 2, as the official files; str keys, because upstream reads them as
    # entry['data']: the originals come from Python 2, whose str keys load as str under
    # encoding='latin1' (Python 3 bytes at protocol 2 would load as bytes).
    with open(path, 'wb') as f:
        pickle.dump(entry, f, protocol=2)


def _make_cifar(root: PathLike, num_classes: int, num_train_per_class: int,
                num_test_per_class: int, seed: int) -> str:
    """The files of :func:`make_cifar10` (10 classes) or :func:`make_cifar100` (100)."""
    if num_train_per_class < 1 or num_test_per_class < 1:
        raise ValueError(f'num_train_per_class and num_test_per_class must be >= 1, got '
                         f'{num_train_per_class} and {num_test_per_class}')
    cifar10 = num_classes == 10
    classes = CIFAR10_CLASSES if cifar10 else CIFAR100_CLASSES
    folder = osp.join(os.fspath(root), 'cifar-10-batches-py' if cifar10 else 'cifar-100-python')
    os.makedirs(folder, exist_ok=True)

    def split(index: int, per_class: int):
        # The official batches are in random class order: shuffle the labels.
        rng = np.random.default_rng([seed, index])
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))  # (N,)
        images = np.stack([_cifar_image(rng, int(c), num_classes) for c in labels])
        names = [f'{classes[c]}_s_{i + 1:06d}.png' for i, c in enumerate(labels.tolist())]
        return _cifar_rows(images), labels.tolist(), names  # (N, 3072) uint8, N ints, N names

    train, test = split(0, num_train_per_class), split(1, num_test_per_class)
    if cifar10:
        batches = [(f'data_batch_{b + 1}', f'training batch {b + 1} of '
                    f'{CIFAR10_TRAIN_BATCHES}', part)
                   for b, part in enumerate(np.array_split(np.arange(len(train[1])),
                                                           CIFAR10_TRAIN_BATCHES))]
        batches.append(('test_batch', 'testing batch 1 of 1', None))
        for name, batch_label, rows in batches:
            data, labels, names = test if rows is None else (
                train[0][rows], [train[1][i] for i in rows], [train[2][i] for i in rows])
            _dump(dict(batch_label=batch_label, labels=labels, data=data, filenames=names),
                  osp.join(folder, name))
        _dump(dict(num_cases_per_batch=len(batches[0][2]), label_names=list(classes),
                   num_vis=32 * 32 * 3), osp.join(folder, 'batches.meta'))
    else:
        for name, batch_label, (data, labels, names) in (
                ('train', 'training batch 1 of 1', train), ('test', 'testing batch 1 of 1', test)):
            _dump(dict(filenames=names, batch_label=batch_label, fine_labels=labels,
                       coarse_labels=[CIFAR100_COARSE[c] for c in labels], data=data),
                  osp.join(folder, name))
        _dump(dict(fine_label_names=list(classes),
                   coarse_label_names=list(CIFAR100_SUPERCLASSES)), osp.join(folder, 'meta'))
    return os.fspath(root)


def make_cifar10(root: PathLike,
                 num_train_per_class: int = 5,
                 num_test_per_class: int = 2,
                 seed: int = 0) -> str:
    """Write CIFAR-10's python files (:class:`mmmod.datasets.SafeCIFAR10`) with synthetic
    32x32 images.

    Layout, as extracted from cifar-10-python.tar.gz::

        root/cifar-10-batches-py/
        ├── data_batch_1 ... data_batch_5   training images, split evenly, classes shuffled
        ├── test_batch
        └── batches.meta                    label_names, num_cases_per_batch, num_vis

    A batch is a pickled dict (protocol 2) with ``data`` (N, 3072) uint8, ``labels`` (N ints
    0..9), ``filenames`` and ``batch_label``, as the official files. Class ``c`` has its own
    hue. The bytes are not the official ones: read them with ``verify_md5=False``.

    Args:
        root: Directory to write ``cifar-10-batches-py/`` into (the ``data_root``).
        num_train_per_class: Training images per class (all five batches hold some from 1 on).
        num_test_per_class: Test images per class.
        seed: Seed of the random content.

    Returns:
        str: ``root``, the ``data_root`` to configure.
    """
    return _make_cifar(root, 10, num_train_per_class, num_test_per_class, seed)


def make_cifar100(root: PathLike,
                  num_train_per_class: int = 2,
                  num_test_per_class: int = 1,
                  seed: int = 0) -> str:
    """Write CIFAR-100's python files (:class:`mmmod.datasets.SafeCIFAR100`) with synthetic
    32x32 images.

    Layout, as extracted from cifar-100-python.tar.gz::

        root/cifar-100-python/
        ├── train    filenames, batch_label, fine_labels, coarse_labels, data (N, 3072) uint8
        ├── test
        └── meta     fine_label_names (100), coarse_label_names (20)

    ``coarse_labels`` are the real superclasses of the fine labels. Class ``c`` has the hue of
    ``c % 10`` and the stripe orientation of ``c // 10``. The bytes are not the official ones:
    read them with ``verify_md5=False``.

    Args:
        root: Directory to write ``cifar-100-python/`` into (the ``data_root``).
        num_train_per_class: Training images per fine class.
        num_test_per_class: Test images per fine class.
        seed: Seed of the random content.

    Returns:
        str: ``root``, the ``data_root`` to configure.
    """
    return _make_cifar(root, 100, num_train_per_class, num_test_per_class, seed)


#: Generators by the dataset name ``tools/misc/generate_data.py`` takes.
GENERATORS: Dict[str, Callable[..., str]] = dict(
    imagenet=make_imagenet, cityscapes=make_cityscapes, voc=make_voc, svhn=make_svhn,
    cifar10=make_cifar10, cifar100=make_cifar100)
