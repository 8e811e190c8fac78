"""A local folder as a :class:`~dino_pipe.storage.store.Store` (keys are paths under the folder).

Writes are atomic (temp file + rename, :mod:`dino_pipe.atomic`); a folder keeps no object metadata,
so :meth:`LocalStore.stat` reports sizes only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from dino_pipe.atomic import atomic_open, atomic_write_bytes
from dino_pipe.storage.store import Stat

CHUNK = 1 << 20  # bytes per read when copying a file out


class LocalStore:
    """The folder ``root`` (it need not exist yet: it then lists as empty)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = str(self.root)

    def child(self, name: str) -> LocalStore:
        return LocalStore(self.root / name)

    def describe(self, key: str = "") -> str:
        return str(self.root / key) if key else self.url

    def list(self, folder: str = "") -> tuple[dict[str, int], list[str]]:
        files: dict[str, int] = {}
        dirs: list[str] = []
        try:
            entries = list(os.scandir(self.root / folder))
        except FileNotFoundError:
            return files, dirs
        for e in entries:
            if e.is_dir():
                dirs.append(e.name)
            elif e.is_file():
                files[e.name] = e.stat().st_size
        return files, dirs

    def stat(self, key: str) -> Stat | None:
        path = self.root / key
        return Stat(path.stat().st_size) if path.is_file() else None

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def download(self, key: str, out: BinaryIO) -> tuple[int, str]:
        out.seek(0)
        out.truncate()
        sha, n = hashlib.sha256(), 0
        with open(self.root / key, "rb") as f:
            while block := f.read(CHUNK):
                out.write(block)
                sha.update(block)
                n += len(block)
        return n, sha.hexdigest()

    def put_file(self, key: str, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src, atomic_open(dest, "wb") as f:
            shutil.copyfileobj(src, f, CHUNK)

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, data)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                (self.root / key).unlink()
