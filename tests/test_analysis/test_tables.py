"""make_tables: tables from test jsons and complexity json, gaps for missing runs."""
import csv
import json
import os.path as osp
import subprocess
import sys

from mmmod.analysis.tables import GAP, TABLES, collect, latest_test_metrics, table_rows

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# Bounds a hung subprocess; no normal run comes near it, even on a loaded machine.
HANG_TIMEOUT_S = 30 * 60


def write_test_json(work_dirs, name, timestamp, metrics):
    run = work_dirs / name / timestamp
    run.mkdir(parents=True)
    (run / f'{timestamp}.json').write_text(json.dumps(metrics))
    (run / 'vis_data').mkdir()  # training logs must not be read as test results
    (run / 'vis_data' / f'{timestamp}.json').write_text('{"accuracy/top1": -1}')


def test_tables_and_figure(tmp_path):
    work = tmp_path / 'work_dirs'
    write_test_json(work, 'mobilenet-v2_8xb32_in1k', '20260101_000000',
                    {'accuracy/top1': 1.0})  # an older run: superseded
    write_test_json(work, 'mobilenet-v2_8xb32_in1k', '20260102_000000',
                    {'accuracy/top1': 71.6, 'latency/cpu_ms': 40.0})
    write_test_json(work, 'mobilenet-v2-mod_8xb32_in1k', '20260102_000000',
                    {'accuracy/top1': 69.3, 'latency/cpu_ms': 28.0, 'latency/cuda_ms': 0.5})
    write_test_json(work, 'resnet50-mod_8xb32_in1k', '20260102_000000', {'accuracy/top1': 75.})
    complexity = tmp_path / 'complexity.json'
    complexity.write_text(json.dumps({
        'mobilenet-v2_8xb32_in1k': dict(macs=320_300_000, params=3_504_872),
        'resnet50-mod_8xb32_in1k': dict(macs=3_000_000_000, params=20_000_000)}))

    records = collect([str(work)], [str(complexity)])
    assert latest_test_metrics(str(work / 'mobilenet-v2_8xb32_in1k'))['accuracy/top1'] == 71.6
    table2 = {t.name: t for t in TABLES}['table2']
    rows = {row[0]: row for row in table_rows(table2, records)}
    header = table_rows(table2, records)[0]
    col = {h: i for i, h in enumerate(header)}
    assert rows['MobileNetV2'][col['Top-1 Acc (%)']] == '71.60'
    assert rows['MobileNetV2'][col['MMAC']] == '320.30'
    assert rows['MobileNetV2-MoD'][col['Speed-up CPU']] == '1.43'  # 40 / 28
    assert rows['MobileNetV2-MoD'][col['Speed-up GPU']] == GAP  # no baseline GPU time
    assert rows['MobileNetV2-MoD-L'][1:] == [GAP] * (len(header) - 1)  # never run

    out = tmp_path / 'tables'
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'make_tables.py'), '--work-dirs', str(work),
         '--complexity', str(complexity), '--out-dir', str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:]
    for table in TABLES:
        assert (out / f'{table.name}.md').read_text().count('|') > 0
        with open(out / f'{table.name}.csv') as f:
            assert len(list(csv.reader(f))) == len(table.rows) + 1
    assert (out / 'fig3.png').stat().st_size > 0
    assert '| ResNet50-MoD | 75.00 | 3.00 | 20.00 | — |' in (out / 'table1.md').read_text()


def test_nothing_run_gives_all_gaps(tmp_path):
    records = collect([str(tmp_path / 'missing')], [])
    for table in TABLES:
        for row in table_rows(table, records)[1:]:
            assert row[1:] == [GAP] * (len(row) - 1)
