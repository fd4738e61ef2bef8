"""One training run per work dir at a time.

Two ``tools/train.py`` runs on one work dir write the same ``iter_N.pth`` / ``epoch_N.pth``,
``last_checkpoint`` and config dump: one silently overwrites the other's checkpoints, and a
``--resume`` picks up whichever was written last. mmengine does not notice.

:func:`work_dir_lock` takes an exclusive ``flock`` on ``WORK_DIR/.train.lock`` for the whole run
and writes the holder's pid, host, start time and command into it. A second run finds the lock
held and stops with :class:`WorkDirInUseError`, naming both runs. The lock belongs to the open
file, so the OS releases it when the holder ends in any way (exit, exception, SIGKILL): the file
that stays behind is not a lock, and the next run takes it over as upstream would start. The file
is never deleted: deleting it would let a run that opened the old file and one that creates a new
one both hold "the" lock.

In a distributed run only the process of global rank 0 takes the lock (read from the launcher's
environment, before any process group exists): the ranks of one run share a work dir by design,
and rank 0 is the one that writes checkpoints. If rank 0 stops, the launcher stops the others.
"""
import contextlib
import datetime
import errno
import json
import os
import os.path as osp
import shlex
import socket
import sys
from typing import Iterator, Optional

__all__ = ['work_dir_lock', 'WorkDirInUseError', 'LOCK_NAME']

LOCK_NAME = '.train.lock'
# Where each launcher gives a process its global rank (what mmengine.dist.init_dist reads).
RANK_ENV = {'pytorch': 'RANK', 'slurm': 'SLURM_PROCID', 'mpi': 'OMPI_COMM_WORLD_RANK'}
# errno of a non-blocking flock on a held lock (EWOULDBLOCK == EAGAIN on Linux).
HELD = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


class WorkDirInUseError(RuntimeError):
    """Another live training run holds the work dir."""


def _launcher_rank(launcher: str) -> int:
    name = RANK_ENV.get(launcher)
    return int(os.environ.get(name, 0)) if name else 0


def _this_run() -> dict:
    return dict(pid=os.getpid(), host=socket.gethostname(),
                started=datetime.datetime.now().isoformat(timespec='seconds'),
                command=shlex.join([sys.executable, *sys.argv]), cwd=os.getcwd())


def _describe(run: Optional[dict]) -> str:
    if not run:
        return 'a process that has just taken the lock (it has not written its details yet)'
    started = f', since {run["started"]}' if run.get('started') else ''
    return (f'pid {run.get("pid")} on {run.get("host")}{started}: {run.get("command")} '
            f'(in {run.get("cwd")})')


def _read_holder(fd: int) -> Optional[dict]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = b''
    while True:
        block = os.read(fd, 1 << 16)
        if not block:
            break
        text += block
    try:
        return json.loads(text.decode())
    except ValueError:  # empty or half written
        return None


@contextlib.contextmanager
def work_dir_lock(work_dir: str, launcher: str = 'none') -> Iterator[Optional[str]]:
    """Hold ``WORK_DIR/.train.lock`` for the duration of the ``with`` block.

    Args:
        work_dir (str): The run's work dir (created if missing, as the Runner would).
        launcher (str): ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``; with a launcher only
            global rank 0 locks.

    Yields:
        str | None: The lock file's path, or None on ranks other than 0 (and where the OS has
        no ``flock``: then runs are not locked).

    Raises:
        WorkDirInUseError: when a live process holds the lock; names it and this run.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no flock, the run goes unlocked as upstream
        fcntl = None
    if fcntl is None or _launcher_rank(launcher) != 0:
        yield None
        return
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, LOCK_NAME)
    # no O_TRUNC: until this run holds the lock, the file holds the holder's details
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in HELD:
                raise
            raise WorkDirInUseError(
                f'work dir {osp.abspath(work_dir)} is in use by another training run '
                f'(it holds {path}):\n'
                f'  running:  {_describe(_read_holder(fd))}\n'
                f'  this run: {_describe(dict(_this_run(), started=None))}\n'
                'Both would write the same checkpoints, last_checkpoint and logs. Wait until '
                'the running one ends, or give this run another --work-dir.') from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_this_run()).encode())
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays
