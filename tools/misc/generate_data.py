"""Write a small synthetic dataset in a real on-disk format (see mmmod.datasets.generate).

    python tools/misc/generate_data.py imagenet data/imagenet
    python tools/misc/generate_data.py cityscapes data/cityscapes
    python tools/misc/generate_data.py voc data          # writes data/VOCdevkit
    python tools/misc/generate_data.py svhn data/svhn    # train/test/extra_32x32.mat
    python tools/misc/generate_data.py cifar10 data/cifar10    # cifar-10-batches-py/
    python tools/misc/generate_data.py cifar100 data/cifar100  # cifar-100-python/

The CIFAR sets are read by SafeCIFAR10 / SafeCIFAR100 with verify_md5=False (their bytes are not
the official ones, so the md5 check, and mmpretrain's CIFAR10, refuse them).
"""
import argparse
import os
import os.path as osp

from mmmod.datasets.generate import GENERATORS


def parse_args():
    parser = argparse.ArgumentParser(
        description='Write a small synthetic dataset in the layout the standard OpenMMLab '
        'dataset class reads (ImageNet, CityscapesDataset, VOCDataset, SVHN, SafeCIFAR10/100 '
        'with verify_md5=False).')
    parser.add_argument('dataset', choices=sorted(GENERATORS), help='dataset layout')
    parser.add_argument('out_dir', help='directory to write into (voc: writes OUT_DIR/VOCdevkit)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random content')
    return parser.parse_args()


def main():
    args = parse_args()
    data_root = GENERATORS[args.dataset](args.out_dir, seed=args.seed)
    print(f'Wrote a demo {args.dataset} dataset; use data_root={data_root!r}')
    for dirpath, _, files in sorted(os.walk(data_root)):
        if files:
            n = len(files)
            print(f'  {osp.relpath(dirpath, data_root)}/: {n} file{"s" * (n != 1)}')


if __name__ == '__main__':
    main()
