"""Two ``tools/train.py`` runs on one work dir: while the first is alive the second refuses to
start and names both; once the first has ended, a new run starts as upstream (the stale lock file
is no obstacle)."""
import os.path as osp
import re
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

TOOLS = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools')
# Bounds a hang (a run that never gets ready or never ends); the runs take seconds.
HANG_TIMEOUT_S = 30 * 60


def test_second_run_on_a_live_work_dir_refused(tmp_path, write_config, tool_env, run_tool):
    ready, go = tmp_path / 'ready', tmp_path / 'go'
    config = write_config(tmp_path, max_iters=1, ckpt_interval=1, custom_hooks=[
        dict(type='WaitForFileHook', ready=str(ready), go=str(go), timeout=HANG_TIMEOUT_S)])
    work_dir = tmp_path / 'work_dir'
    args = [sys.executable, osp.join(TOOLS, 'train.py'), str(config), '--work-dir',
            str(work_dir)]
    first = subprocess.Popen(args, env=tool_env(config), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + HANG_TIMEOUT_S
        while not ready.exists():  # the first run is training, its work dir locked
            assert first.poll() is None, first.stdout.read()[-4000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)

        second = run_tool(['train.py', config, '--work-dir', work_dir, '--amp'],
                          tool_env(config))
        assert second.returncode != 0
        out = second.stdout
        assert 'WorkDirInUseError' in out, out[-4000:]
        assert f'work dir {work_dir} is in use by another training run' in out
        running = re.search(r'running: +pid (\d+) .*', out).group(0)
        assert f'pid {first.pid} ' in running and '--amp' not in running
        this_run = re.search(r'this run: +pid \d+ .*', out).group(0)
        assert f'pid {first.pid} ' not in this_run and '--amp' in this_run
        assert not (work_dir / 'iter_1.pth').exists()  # neither has written a checkpoint yet
    finally:
        go.touch()
        first_out, _ = first.communicate(timeout=HANG_TIMEOUT_S)
    assert first.returncode == 0, first_out[-4000:]
    assert (work_dir / 'iter_1.pth').exists()

    third = run_tool(['train.py', config, '--work-dir', work_dir], tool_env(config))
    assert third.returncode == 0, third.stdout[-4000:]
