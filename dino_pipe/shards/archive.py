"""ImageNet's image archives read in place, never extracted: an index of members, then ``os.pread``.

* ``ILSVRC2012_img_train.tar``: 1,000 inner tars ``n01440764.tar``, each holding flat JPEGs. A member
  of an inner tar is listed as ``n01440764/<name>`` (its path in the extracted tree).
* ``ILSVRC2012_img_val.tar``: flat JPEGs.

Both tars are uncompressed, so every image is a contiguous byte range of the outer file: tarfile
gives each member's data offset (``offset_data``), and an inner tar's member starts at the outer
data offset of the inner tar plus its own ``offset_data``. The index is built once per run
(headers only: 512 bytes per member); workers then read each image with one ``os.pread``.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from dino_pipe.errors import UserError

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
TEST_TAR_GLOB = "ILSVRC2012_img_test*.tar"


@dataclass(frozen=True)
class ArchiveMember:
    """One regular file in an archive: its path (as extracted), where its bytes start, how many."""

    path: str
    offset: int
    size: int


class _Window:
    """A read-only, seekable view of bytes ``[start, start + size)`` of an open file (an inner tar)."""

    def __init__(self, fd: int, start: int, size: int, name: str):
        self.fd, self.start, self.size, self.name, self.pos = fd, start, size, name, 0

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        data = read_range(self.fd, self.start + self.pos, n) if n > 0 else b""
        self.pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else self.size + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos


def read_range(fd: int, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of ``fd`` (fewer only at the end of the file)."""
    parts = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return b"".join(parts)


def read_member(fd: int, offset: int, size: int) -> bytes:
    """The bytes of one indexed member; OSError when the archive ends before them (truncated)."""
    data = read_range(fd, offset, size)
    if len(data) != size:
        raise OSError(f"the archive ends inside this member ({len(data)} of {size} bytes)")
    return data


def _members(fileobj, where: str) -> list[tarfile.TarInfo]:
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tf:
            return [m for m in tf.getmembers() if m.isfile()]
    except (tarfile.TarError, EOFError) as e:
        raise UserError(f"{where} is not a readable uncompressed tar ({e}); download it again") from None


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def index_flat(path: Path) -> list[ArchiveMember]:
    """The regular files of a flat tar (``ILSVRC2012_img_val.tar``), sorted by path."""
    with _open(path) as f:
        members = [ArchiveMember(m.name, m.offset_data, m.size) for m in _members(f, str(path))]
    return sorted(members, key=lambda m: m.path)


def index_nested(path: Path) -> tuple[list[ArchiveMember], list[str]]:
    """The images of a tar of per-class tars (``ILSVRC2012_img_train.tar``), sorted by path, and the
    class names (the inner tars' names without ``.tar``, sorted). Other outer members are listed as they are."""
    out: list[ArchiveMember] = []
    classes = []
    with _open(path) as f:
        for outer in _members(f, str(path)):
            if not outer.name.endswith(".tar"):
                out.append(ArchiveMember(outer.name, outer.offset_data, outer.size))
                continue
            wnid = outer.name[: -len(".tar")]
            classes.append(wnid)
            window = _Window(f.fileno(), outer.offset_data, outer.size, f"{path}:{outer.name}")
            for inner in _members(window, f"{outer.name} in {path}"):
                if inner.offset_data + inner.size > outer.size:
                    raise UserError(f"{outer.name} in {path} is truncated; download {path.name} again")
                out.append(ArchiveMember(f"{wnid}/{inner.name}", outer.offset_data + inner.offset_data, inner.size))
    return sorted(out, key=lambda m: m.path), sorted(classes)
