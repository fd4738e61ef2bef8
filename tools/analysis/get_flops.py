"""MACs and parameters of a config's model (or a preset classifier) at its test input size.

    python tools/analysis/get_flops.py CONFIG [--shape H [W]] [--out complexity.json]
    python tools/analysis/get_flops.py --preset mobilenetv2 mobilenetv2-mod mobilenetv2-mod-l
    python tools/analysis/get_flops.py GATED_CONFIG [--checkpoint CKPT] [--num-images 8]
        [--gate-mode threshold|stochastic|on] [--tau 0.5]

Counts with mmengine's FlopAnalyzer (jit trace: MoD blocks are counted at the k channels they
process); see mmmod/analysis/complexity.py for the 'paper' and 'mmengine' conventions. Where
the MoD paper reports numbers for a preset (Table 2), they are printed alongside.

A config whose backbone is gated (GatedResNet, GatedMobileNetV2) costs what its gates decide,
image by image: the tool then reports the *expected* MACs per image over the first
``--num-images`` images of the config's test set (gated blocks from their active channels, gate
networks separately and included, the rest traced; see ``gated_complexity`` in
mmmod/analysis/complexity.py), with the trained gates of ``--checkpoint``.
"""
import argparse
import json
import os
import os.path as osp

from mmengine.config import Config, DictAction

from mmmod.analysis.benchmark import PRESETS, build_classifier
from mmmod.analysis.complexity import (CONVENTIONS, DEFAULT_SHAPE, PAPER_COMPLEXITY,
                                       compare_with_paper, complexity, config_complexity,
                                       config_gated_complexity, has_gated_backbone,
                                       model_from_config)
from mmmod.models.layers.gumbel_gate import GATE_MODES


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
    gated = parser.add_argument_group('gated backbones (expected MACs over test images)')
    gated.add_argument('--checkpoint', help='trained weights (the gates decide the cost)')
    gated.add_argument('--num-images', type=int, default=8,
                       help='test images to average over (default 8)')
    gated.add_argument('--gate-mode', choices=GATE_MODES,
                       help="gates' inference mode; default: the config's (threshold)")
    gated.add_argument('--tau', type=float, help="threshold of 'threshold' mode")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, xxx=yyy')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.preset is None):
        parser.error('give either CONFIG or --preset NAME ...')
    if args.shape is not None:
        if len(args.shape) not in (1, 2):
            parser.error('--shape takes H or H W')
        args.shape = tuple(args.shape * 2 if len(args.shape) == 1 else args.shape)
    if args.num_images < 1:
        parser.error(f'--num-images must be >= 1, got {args.num_images}')
    return args


def _gated_row(name, r):
    return (f'{name:<24} {r["macs"] / 1e9:8.3f} GMAC expected per image over {r["num_images"]} '
            f'test images ({r["gate_mode"]}, tau {r["tau"]}; min {r["macs_min"] / 1e9:.3f}, '
            f'max {r["macs_max"] / 1e9:.3f})\n'
            f'{"":<24} all gates on {r["full_macs"] / 1e9:.3f} GMAC, ratio {r["ratio"]:.3f}, '
            f'gate rate {r["gate_rate"]:.3f}; gated blocks {r["gated_macs"] / 1e9:.3f} of '
            f'{r["gated_full_macs"] / 1e9:.3f} GMAC, gate networks '
            f'{r["gate_net_macs"] / 1e6:.2f} MMAC, rest {r["ungated_macs"] / 1e9:.3f} GMAC '
            f'({r["convention"]}); {r["params"] / 1e6:.3f} M params')


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
        if has_gated_backbone(model_from_config(cfg)):
            result = config_gated_complexity(cfg, args.num_images, args.convention,
                                             args.gate_mode, args.tau, args.checkpoint)
            print(_gated_row(name, result))
            results[name] = result
            _write(args.out, results)
            return results
        result = config_complexity(cfg, args.shape, args.convention)
        if args.paper:
            result['paper'] = compare_with_paper(args.paper, result)
        results[name] = result
    for name, result in results.items():
        print(_row(name, result))
        if result['uncounted']:
            print(f'{"":<24} not counted: {result["uncounted"]}')
    _write(args.out, results)
    return results


def _write(out, results):
    if out:
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        with open(out, 'w') as f:
            json.dump(results, f, indent=2)
        print(f'written {out}')


if __name__ == '__main__':
    main()
