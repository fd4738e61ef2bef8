"""The per-layer history of a dynamic-channel-execution run (mmmod/analysis/bandit_history.py):
read back as ChannelBanditHook writes it, plotted as a PNG, malformed files clear errors."""
import json

import pytest

from mmmod.analysis.bandit_history import plot_layer_activity, read_history


def _write(path, records):
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    return str(path)


def test_history_round_trip_and_plot(tmp_path):
    layers = [f'layer1.{i}/conv1' for i in range(30)]
    records = [dict(iter=i, layers=layers, untried=max(0, 60 - 20 * i),
                    active=[(i + j) % 7 / 7 for j in range(30)]) for i in range(1, 6)]
    # a resumed run writes iteration 4 and 5 again: the later records win
    records += [dict(records[3], active=[1.0] * 30), dict(records[4], active=[0.0] * 30)]
    history = read_history(_write(tmp_path / 'h.jsonl', records))
    assert history['iters'].tolist() == [1, 2, 3, 4, 5]
    assert history['layers'] == layers and history['active'].shape == (5, 30)
    assert history['active'][3].tolist() == [1.0] * 30
    assert history['untried'].tolist() == [40, 20, 0, 0, 0]
    out = plot_layer_activity(history, str(tmp_path / 'layers.png'), 'run')
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('text, match', [
    ('', 'holds no record'),
    ('{"iter": 1\n', r'line 1 is not JSON'),
    ('[1, 2]\n', r"line 1: expected an object with keys \['iter', 'layers', 'active', "),
    ('{"iter": 1, "layers": ["a"], "active": [1.0], "untried": 0}\n'
     '{"iter": 2, "layers": ["b"], "active": [1.0], "untried": 0}\n', 'line 2: its layers'),
])
def test_malformed_history_is_a_clear_error(tmp_path, text, match):
    path = tmp_path / 'h.jsonl'
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_history(str(path))
