"""One writer per output folder: ``shard`` and ``train`` hold ``OUT/.dino-pipe.lock`` while they write.

The lock is an ``fcntl.flock`` on that file, so the operating system releases it when the holder ends
in any way (exit, crash, ``kill -9``, a lost node of a torchrun job): a stale lock never blocks the
next run. The file holds who has it (pid, host, command, since when) for the one-line refusal a second
writer gets; it is removed when the holder ends normally (a leftover one, after ``kill -9``, is taken
over by the next run and ignored by the folder checks: :data:`LOCK_NAME`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Iterator

from dino_pipe.errors import UserError

LOCK_NAME = ".dino-pipe.lock"


def _holder(f: IO) -> str:
    """Who holds the lock, from the file's contents (empty while the holder is still writing them)."""
    f.seek(0)
    try:
        info = json.loads(f.read() or b"{}")
    except ValueError:
        info = {}
    if not info.get("pid"):
        return "another dino-pipe process"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("since", 0)))
    return f"pid {info['pid']} on {info.get('host', '?')} since {since}: {info.get('command', '?')}"


def _open_locked(path: Path, option: str) -> IO:
    """Open ``path`` and take its exclusive flock (not waiting); the file must still be the one at ``path``
    after locking (a holder ending in between removes it: then try again with the new file)."""
    while True:
        f = open(path, "a+b", buffering=0)  # unbuffered: nothing left to flush (and fail) at close
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(f)
            f.close()
            raise UserError(f"{option} {path.parent} is being written by another run ({who}); wait for it to end "
                            f"or stop it, or use another {option}") from None
        except BaseException:
            f.close()
            raise
        try:
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


def _write_holder(f: IO) -> None:
    """Record who holds the lock; best effort (on a full disk the run itself then says what failed)."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
            "command": " ".join(["dino-pipe", *sys.argv[1:]])[:300]}
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(info).encode())
    except OSError:
        with contextlib.suppress(OSError):
            f.truncate(0)


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, option: str = "--out") -> Iterator[None]:
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block; a second holder -> UserError
    naming the first. A folder this call created is removed again when it is left empty."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    f = _open_locked(path, option)
    try:
        _write_holder(f)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        f.close()
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a refused start leaves no trace
