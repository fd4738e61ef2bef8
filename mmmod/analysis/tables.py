"""The CNN-MoD paper's Tables 1-4 and Fig. 3 from our own runs.

Inputs, all optional -- a run that is missing leaves a visible gap (``—``), never a crash:

- work dirs of ``tools/test.py`` runs, named after their configs (``work_dirs/CONFIG/``); the
  metrics json ``WORK_DIR/TIMESTAMP/TIMESTAMP.json`` of the latest test is read (accuracy,
  mIoU or mAP, and ``latency/cpu_ms`` / ``latency/cuda_ms`` when the run had
  :class:`~mmmod.engine.hooks.LatencyHook`);
- complexity json files written by ``tools/analysis/get_flops.py --out``, keyed by config
  name (``macs``, ``params``).

Speed-ups are baseline time / model time on the same device, as in the paper.
"""
import csv
import glob
import json
import os
import os.path as osp
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

GAP = '—'


@dataclass(frozen=True)
class Column:
    """A table column: header, how to get the value from a run record, print format."""
    header: str
    key: str  # metric key, or one of the derived keys below
    fmt: str = '{:.2f}'


@dataclass(frozen=True)
class Table:
    """Rows are (label, config name, baseline config name or None)."""
    name: str
    caption: str
    rows: Tuple[Tuple[str, str, Optional[str]], ...]
    columns: Tuple[Column, ...]


def _in1k(name):
    return f'{name}_8xb32_in1k'


def _fcn(name):
    return f'fcn_{name}-d8_4xb2-80k_cityscapes-512x1024'


def _frcnn(name):
    return f'faster-rcnn_{name}_fpn_1x_voc0712'


# Derived keys: gmac / mmac / tflops (complexity), params_m, cpu_ms / gpu_ms (latency),
# speedup_cpu / speedup_gpu (baseline ms / ms).
TIMES = (Column('CPU (ms)', 'cpu_ms'), Column('GPU (ms)', 'gpu_ms'),
         Column('Speed-up CPU', 'speedup_cpu'), Column('Speed-up GPU', 'speedup_gpu'))
TABLES = (
    Table('table1', 'ImageNet, ResNets: top-1, GMAC, parameters, inference per image',
          (('ResNet50', _in1k('resnet50'), None),
           ('ResNet50-MoD', _in1k('resnet50-mod'), _in1k('resnet50')),
           ('ResNet75-MoD', _in1k('resnet75-mod'), _in1k('resnet50')),
           ('ResNet86-MoD', _in1k('resnet86-mod'), _in1k('resnet50')),
           ('ResNet101', _in1k('resnet101'), None),
           ('ResNet101-MoD', _in1k('resnet101-mod'), _in1k('resnet101'))),
          (Column('Top-1 Acc (%)', 'accuracy/top1'), Column('GMAC', 'gmac'),
           Column('Params (M)', 'params_m')) + TIMES),
    Table('table2', 'ImageNet, MobileNetV2: top-1, MMAC, parameters, inference per image',
          (('MobileNetV2', 'mobilenet-v2_8xb32_in1k', None),
           ('MobileNetV2-MoD-L', 'mobilenet-v2-mod-l_8xb32_in1k', 'mobilenet-v2_8xb32_in1k'),
           ('MobileNetV2-MoD', 'mobilenet-v2-mod_8xb32_in1k', 'mobilenet-v2_8xb32_in1k')),
          (Column('Top-1 Acc (%)', 'accuracy/top1'), Column('MMAC', 'mmac'),
           Column('Params (M)', 'params_m')) + TIMES),
    Table('table3', 'Cityscapes val, FCN: mIoU, FLOPs, parameters, inference per image',
          (('FCN-R86-MoD', _fcn('r86-mod'), _fcn('r50')),
           ('FCN-R50', _fcn('r50'), None),
           ('FCN-R75-MoD', _fcn('r75-mod'), _fcn('r50')),
           ('FCN-R50-MoD', _fcn('r50-mod'), _fcn('r50'))),
          (Column('mIoU (%)', 'mIoU'), Column('FLOPS (T)', 'tflops', '{:.3f}'),
           Column('Params (M)', 'params_m', '{:.3f}')) + TIMES),
    Table('table4', 'Pascal VOC 2007 test, Faster R-CNN: mAP, FLOPs, parameters, inference',
          (('Faster-RCNN-R86-MoD', _frcnn('r86-mod'), _frcnn('r50')),
           ('Faster-RCNN-R50', _frcnn('r50'), None),
           ('Faster-RCNN-R75-MoD', _frcnn('r75-mod'), _frcnn('r50')),
           ('Faster-RCNN-R50-MoD', _frcnn('r50-mod'), _frcnn('r50'))),
          (Column('mAP (%)', 'pascal_voc/mAP'), Column('AP50 (%)', 'pascal_voc/AP50'),
           Column('FLOPS (T)', 'tflops', '{:.3f}'),
           Column('Params (M)', 'params_m', '{:.3f}')) + TIMES),
)

# Fig. 3: ResNet series on ImageNet, (label, [config names]).
FIG3_SERIES = (
    ('ResNet', [_in1k(f'resnet{d}') for d in (18, 34, 50, 101, 152)]),
    ('ResNet-MoD', [_in1k(f'resnet{d}-mod') for d in (18, 26, 34, 42, 50, 75, 86, 101, 152)]),
)
FIG3_PANELS = (('gmac', 'GMAC'), ('params_m', 'Params (M)'), ('cpu_ms', 'CPU inference (ms)'),
               ('gpu_ms', 'GPU inference (ms)'))


def latest_test_metrics(work_dir: str) -> Optional[dict]:
    """The metrics json of the latest ``tools/test.py`` run in ``work_dir``, or None.

    mmengine writes it to ``WORK_DIR/TIMESTAMP/TIMESTAMP.json`` (training logs live under
    ``TIMESTAMP/vis_data/`` and are not matched); timestamps sort chronologically.
    """
    found = sorted(p for p in glob.glob(osp.join(work_dir, '*', '*.json'))
                   if osp.basename(p) == osp.basename(osp.dirname(p)) + '.json')
    for path in reversed(found):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            continue  # an interrupted write: try the previous run
    return None


def _work_dirs(roots: Iterable[str]) -> Dict[str, str]:
    """config name -> work dir, for roots that are work dirs or folders of work dirs."""
    dirs = {}
    for root in roots:
        if latest_test_metrics(root) is not None:
            dirs[osp.basename(osp.normpath(root))] = root
        elif osp.isdir(root):
            for name in sorted(os.listdir(root)):
                if latest_test_metrics(osp.join(root, name)) is not None:
                    dirs[name] = osp.join(root, name)
    return dirs


def collect(work_dirs: Sequence[str] = (),
            complexity_files: Sequence[str] = ()) -> Dict[str, dict]:
    """config name -> record: the test metrics plus the derived keys used by the tables."""
    records: Dict[str, dict] = {}
    for name, path in _work_dirs(work_dirs).items():
        records.setdefault(name, {}).update(latest_test_metrics(path))
    for path in complexity_files:
        with open(path) as f:
            for name, result in json.load(f).items():
                records.setdefault(name, {}).update(macs=result['macs'], params=result['params'])
    for record in records.values():
        if 'macs' in record:
            record.update(gmac=record['macs'] / 1e9, mmac=record['macs'] / 1e6,
                          # Tables 3-4 "FLOPS (T)": what mmseg/mmdet's get_flops print as
                          # flops, i.e. mmengine's count, which is MACs
                          tflops=record['macs'] / 1e12)
        if 'params' in record:
            record['params_m'] = record['params'] / 1e6
        if 'latency/cpu_ms' in record:
            record['cpu_ms'] = record['latency/cpu_ms']
        if 'latency/cuda_ms' in record:
            record['gpu_ms'] = record['latency/cuda_ms']
    return records


def table_rows(table: Table, records: Dict[str, dict]) -> List[List[str]]:
    """Header row, then one row of formatted cells per model; gaps are ``—``."""
    rows = [['Model'] + [c.header for c in table.columns]]
    for label, name, baseline in table.rows:
        record = dict(records.get(name, {}))
        base = records.get(baseline, {}) if baseline else {}
        for device in ('cpu', 'gpu'):
            if record.get(f'{device}_ms') and base.get(f'{device}_ms'):
                record[f'speedup_{device}'] = base[f'{device}_ms'] / record[f'{device}_ms']
        cells = [label]
        for column in table.columns:
            value = record.get(column.key)
            cells.append(GAP if not isinstance(value, (int, float)) else column.fmt.format(value))
        rows.append(cells)
    return rows


def to_markdown(table: Table, rows: List[List[str]]) -> str:
    lines = [f'**{table.name.capitalize()}.** {table.caption}', '',
             '| ' + ' | '.join(rows[0]) + ' |', '|' + '---|' * len(rows[0])]
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows[1:]]
    return '\n'.join(lines) + '\n'


def plot_fig3(records: Dict[str, dict], path: str) -> None:
    """Top-1 accuracy against GMAC, parameters, CPU and GPU ms: four panels, one PNG.

    A panel without data says so instead of being left blank.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FIG3_PANELS), figsize=(4 * len(FIG3_PANELS), 3.6))
    for ax, (key, xlabel) in zip(axes, FIG3_PANELS):
        plotted = False
        for series, names in FIG3_SERIES:
            points = [(records[n][key], records[n]['accuracy/top1'], n) for n in names
                      if isinstance(records.get(n, {}).get(key), (int, float))
                      and isinstance(records.get(n, {}).get('accuracy/top1'), (int, float))]
            if points:
                points.sort()
                ax.plot([p[0] for p in points], [p[1] for p in points], 'o-', label=series)
                plotted = True
        if not plotted:
            ax.text(0.5, 0.5, f'no runs with {xlabel}', ha='center', va='center',
                    transform=ax.transAxes, color='gray')
        else:
            ax.legend()
        ax.set_xlabel(xlabel)
        ax.set_ylabel('Top-1 Acc (%)')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_all(records: Dict[str, dict], out_dir: str) -> List[str]:
    """tableN.md + tableN.csv for every table, tables.md with all of them, fig3.png."""
    os.makedirs(out_dir, exist_ok=True)
    written, markdown = [], []
    for table in TABLES:
        rows = table_rows(table, records)
        md = to_markdown(table, rows)
        markdown.append(md)
        for ext, write in (('md', lambda f: f.write(md)),
                           ('csv', lambda f: csv.writer(f).writerows(rows))):
            path = osp.join(out_dir, f'{table.name}.{ext}')
            with open(path, 'w', newline='') as f:
                write(f)
            written.append(path)
    path = osp.join(out_dir, 'tables.md')
    with open(path, 'w') as f:
        f.write('\n'.join(markdown))
    written.append(path)
    path = osp.join(out_dir, 'fig3.png')
    plot_fig3(records, path)
    written.append(path)
    return written
