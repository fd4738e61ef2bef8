"""work_dir_lock: a live run holding the work dir stops another, naming both; the lock goes with
its process, however that process ends."""
import json
import os
import os.path as osp
import re
import signal
import subprocess
import sys

import pytest

from mmmod.engine.work_dir_lock import LOCK_NAME, WorkDirInUseError, work_dir_lock

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# Bounds a hang of the helper process; it takes seconds.
HANG_TIMEOUT_S = 30 * 60
HOLD = '''
import sys, time
from mmmod.engine.work_dir_lock import work_dir_lock
with work_dir_lock(sys.argv[1]):
    print('locked', flush=True)
    time.sleep({HANG_TIMEOUT_S})
'''


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock of ``tmp_path / 'work'``; SIGKILLed at the end."""
    work_dir = tmp_path / 'work'
    proc = subprocess.Popen(
        [sys.executable, '-c', HOLD.format(HANG_TIMEOUT_S=HANG_TIMEOUT_S), str(work_dir),
         '--holder-marker'], stdout=subprocess.PIPE, text=True, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.stdout.readline().strip() == 'locked'
    yield proc, work_dir
    proc.kill()
    proc.wait(timeout=HANG_TIMEOUT_S)


def test_live_holder_refuses_another_run_naming_both(holder):
    proc, work_dir = holder
    with pytest.raises(WorkDirInUseError) as e:
        with work_dir_lock(str(work_dir)):
            pytest.fail('entered a work dir another process holds')
    msg = str(e.value)
    assert f'work dir {work_dir} is in use by another training run' in msg
    running = re.search(r'running: +pid (\d+) .*: (.*) \(in', msg)
    assert int(running.group(1)) == proc.pid
    assert '--holder-marker' in running.group(2)  # the holder's command line
    assert re.search(rf'this run: +pid {os.getpid()} ', msg)
    assert 'another --work-dir' in msg


def test_lock_dies_with_its_process(holder):
    proc, work_dir = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=HANG_TIMEOUT_S)
    lock_file = work_dir / LOCK_NAME
    assert json.loads(lock_file.read_text())['pid'] == proc.pid  # the stale file stays
    with work_dir_lock(str(work_dir)) as path:  # and is no obstacle
        assert path == str(lock_file)
        assert json.loads(lock_file.read_text())['pid'] == os.getpid()
    with work_dir_lock(str(work_dir)):  # released at the end of the block
        pass


def test_only_rank0_of_a_launched_run_locks(holder, monkeypatch):
    _, work_dir = holder
    monkeypatch.setenv('RANK', '1')
    with work_dir_lock(str(work_dir), launcher='pytorch') as path:
        assert path is None  # rank 1 shares its run's work dir
    monkeypatch.setenv('RANK', '0')
    with pytest.raises(WorkDirInUseError):
        with work_dir_lock(str(work_dir), launcher='pytorch'):
            pass
