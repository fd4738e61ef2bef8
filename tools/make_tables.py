"""The paper's Tables 1-4 (Markdown + CSV) and Fig. 3 (PNG) from our runs.

    python tools/make_tables.py --work-dirs work_dirs [more ...] \
        --complexity complexity.json [more ...] --out-dir tables/

``--work-dirs``: ``tools/test.py`` work dirs named after their configs, or folders holding them
(latest test json of each; add ``LatencyHook`` to the test for the CPU/GPU columns).
``--complexity``: json files of ``tools/analysis/get_flops.py CONFIG --out``. Missing runs show
as ``—``. See mmmod/analysis/tables.py.
"""
import argparse

from mmmod.analysis.tables import collect, write_all


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="The paper's tables and Fig. 3 from our runs")
    parser.add_argument('--work-dirs', nargs='+', default=[], help='test work dirs or parents')
    parser.add_argument('--complexity', nargs='+', default=[],
                        help='json files of tools/analysis/get_flops.py --out')
    parser.add_argument('--out-dir', default='tables', help='where the files go')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    records = collect(args.work_dirs, args.complexity)
    for path in write_all(records, args.out_dir):
        print(f'written {path}')
    with open(f'{args.out_dir}/tables.md') as f:
        print(f.read())


if __name__ == '__main__':
    main()
