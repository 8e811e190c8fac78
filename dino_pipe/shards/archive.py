"""ImageNet's image archives read in place, never extracted: an index of members, then ``os.pread``.

* ``ILSVRC2012_img_train.tar``: 1,000 inner tars ``n01440764.tar``, each holding flat JPEGs. A member
  of an inner tar is listed as ``n01440764/<name>`` (its path in the extracted tree).
* ``ILSVRC2012_img_val.tar``: flat JPEGs.

Both tars are uncompressed, so every image is a contiguous byte range of the outer file: the tar
header walk (:func:`dino_pipe.shards.tar.read_members`: checksums and bounds checked, GNU long
names and pax followed) gives each member's data offset, and an inner tar's member starts at the
outer data offset of the inner tar plus its own offset. The index is built once per run (headers
only: 512 bytes per member, ~70,000 members/s on one core); workers then read each image with one
``os.pread``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dino_pipe.errors import UserError
from dino_pipe.shards.tar import TarFormatError, TarMember, read_members

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

    def __init__(self, fd: int, start: int, size: int):
        self.fd, self.start, self.size, self.pos = fd, start, size, 0

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


def _members(fileobj, size: int, where: str) -> list[TarMember]:
    """The regular files of the tar ``fileobj`` (``size`` bytes long)."""
    try:
        return list(read_members(fileobj, size))
    except TarFormatError as e:
        raise UserError(f"{where} is not a readable uncompressed tar: {e}; download it again") from None
    except OSError as e:
        raise UserError(f"cannot read {where}: {e.strerror or e}") from None


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def index_flat(path: Path) -> list[ArchiveMember]:
    """The regular files of a flat tar (``ILSVRC2012_img_val.tar``), sorted by path."""
    with _open(path) as f:
        found = _members(f, os.fstat(f.fileno()).st_size, str(path))
    members = [ArchiveMember(m.name, m.offset, m.size) for m in found]
    return sorted(members, key=lambda m: m.path)


def index_nested(path: Path) -> tuple[list[ArchiveMember], list[str]]:
    """The images of a tar of per-class tars (``ILSVRC2012_img_train.tar``), sorted by path, and the
    class names (the inner tars' names without ``.tar``, sorted). Other outer members are listed as they are."""
    out: list[ArchiveMember] = []
    classes = []
    with _open(path) as f:
        for outer in _members(f, os.fstat(f.fileno()).st_size, str(path)):
            if not outer.name.endswith(".tar"):
                out.append(ArchiveMember(outer.name, outer.offset, outer.size))
                continue
            wnid = outer.name[: -len(".tar")]
            classes.append(wnid)
            window = _Window(f.fileno(), outer.offset, outer.size)
            for inner in _members(window, outer.size, f"{outer.name} in {path}"):
                out.append(ArchiveMember(f"{wnid}/{inner.name}", outer.offset + inner.offset, inner.size))
    return sorted(out, key=lambda m: m.path), sorted(classes)
