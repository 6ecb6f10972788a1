"""One run per work folder at a time.

The lock is an operating-system lock (``flock``; ``msvcrt.locking`` on Windows) on
``WORK/.upload-driver/lock``: it goes away with the process that holds it, however that process
ends, so a lock left by a killed run is never in the way (a stale holder is noticed and named).
The file also says who holds it (pid, host, start time, command) so that the second run can say so."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

from upload_common.contract import now_iso
from upload_common.errors import UploadError, from_os_error

LOCK = ".upload-driver/lock"


class WorkFolderBusy(UploadError, BlockingIOError):
    kind = "work_busy"


def _lock(fd: int, *, wait: bool) -> None:
    """Take the lock on ``fd``, waiting for it (``wait``) or OSError when another process holds it."""
    if sys.platform == "win32":  # pragma: no cover - Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))


def _try_lock(fd: int) -> bool:
    try:
        _lock(fd, wait=False)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def waiting(path: Path):
    """Hold the lock on the file ``path`` for the duration, waiting for it while another process (or
    thread) holds it: for short read-change-write turns, such as the run's state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, wait=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 1 << 16).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError, TypeError):
        return False
    except PermissionError:  # pragma: no cover - another user's process
        return True


@contextlib.contextmanager
def hold(work: Path, command: str = "run"):
    """Hold the work folder's lock for the duration (the folder made when missing, one line when it cannot
    be); WorkFolderBusy (one line) when another run does."""
    try:
        Path(work).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise from_os_error(exc, f"cannot create the work folder {work}") or exc from None
    path = Path(work) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            who = _holder(fd)
            here = who.get("host") == socket.gethostname()
            gone = here and not _alive(who.get("pid"))
            stale = " (that process is gone: its lock will be released in a moment)" if gone else ""
            raise WorkFolderBusy(
                f"{work} is in use by another upload-driver {who.get('command', 'run')} (pid "
                f"{who.get('pid', '?')} on {who.get('host', '?')}, since {who.get('since', '?')})"
                f"{stale}: wait for it to finish, or pass another --work",
                work=str(work),
                holder=who,
            )
        previous = _holder(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso(), "command": command}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        yield previous  # the record of the last holder, if it died without releasing (for the log)
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
