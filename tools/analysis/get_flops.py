"""MACs and parameters of a config's model (or a preset classifier) at its test input size.

    python tools/analysis/get_flops.py CONFIG [--shape H [W]] [--out complexity.json]
    python tools/analysis/get_flops.py --preset mobilenetv2 mobilenetv2-mod mobilenetv2-mod-l

Counts with mmengine's FlopAnalyzer (jit trace: MoD blocks are counted at the k channels they
process); see mmmod/analysis/complexity.py for the 'paper' and 'mmengine' conventions. Where
the MoD paper reports numbers for a preset (Table 2), they are printed alongside.
"""
import argparse
import json
import os
import os.path as osp

from mmengine.config import Config, DictAction

from mmmod.analysis.benchmark import PRESETS, build_classifier
from mmmod.analysis.complexity import (CONVENTIONS, DEFAULT_SHAPE, PAPER_COMPLEXITY,
                                       compare_with_paper, complexity, config_complexity)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='GMACs and parameters of a model')
    parser.add_argument('config', nargs='?', help='config file (or use --preset)')
    parser.add_argument('--preset', nargs='+', choices=sorted(PRESETS), metavar='NAME',
                        help=f'ImageNet classifier presets: {", ".join(sorted(PRESETS))}')
    parser.add_argument('--shape', type=int, nargs='+', metavar='SIZE',
                        help='input H [W]; default: the test pipeline size (224 for presets)')
    parser.add_argument('--convention', choices=CONVENTIONS, default='paper',
                        help='what counts as a MAC (see mmmod/analysis/complexity.py)')
    parser.add_argument('--paper', choices=sorted(PAPER_COMPLEXITY),
                        help="compare a CONFIG's numbers with this model of the paper")
    parser.add_argument('--out', help='write the results as json')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, xxx=yyy')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.preset is None):
        parser.error('give either CONFIG or --preset NAME ...')
    if args.shape is not None:
        if len(args.shape) not in (1, 2):
            parser.error('--shape takes H or H W')
        args.shape = tuple(args.shape * 2 if len(args.shape) == 1 else args.shape)
    return args


def _row(name, result):
    line = (f'{name:<24} {result["macs"] / 1e9:8.3f} GMAC  {result["macs"] / 1e6:10.2f} MMAC  '
            f'{result["params"] / 1e6:8.3f} M params  input {result["shape"][0]}x'
            f'{result["shape"][1]} ({result["convention"]})')
    paper = result.get('paper')
    if paper:
        line += (f'\n{"":<24} paper: {paper["paper_mmac"]:.2f} MMAC '
                 f'({paper["mmac_rel_diff"]:+.2%}), {paper["paper_params_m"]} M params '
                 f'({paper["params_rel_diff"]:+.2%})')
    return line


def main(argv=None):
    args = parse_args(argv)
    results = {}
    if args.preset:
        for name in args.preset:
            result = complexity(build_classifier(name), args.shape or DEFAULT_SHAPE,
                                args.convention)
            result['shape_source'] = 'given' if args.shape else 'preset default'
            result['paper'] = compare_with_paper(name, result)
            results[name] = result
    else:
        cfg = Config.fromfile(args.config)
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        name = osp.splitext(osp.basename(args.config))[0]
        result = config_complexity(cfg, args.shape, args.convention)
        if args.paper:
            result['paper'] = compare_with_paper(args.paper, result)
        results[name] = result
    for name, result in results.items():
        print(_row(name, result))
        if result['uncounted']:
            print(f'{"":<24} not counted: {result["uncounted"]}')
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)
        print(f'written {args.out}')
    return results


if __name__ == '__main__':
    main()
