"""The tar container of a shard: a deterministic writer and a fast member reader.

Writer: POSIX ustar members with mtime 0, uid/gid 0, empty user/group names and mode 0644, data
padded to 512-byte blocks, two zero blocks at the end, padded to a 10240-byte record (what GNU
tar and Python's ``tarfile`` write). Nothing depends on the clock or the user, so the same
samples give byte-identical tars. The writer knows each member's data offset as it writes it,
which is all a DALI index needs (:mod:`dino_pipe.shards.index`).

Reader: :func:`read_members` walks the 512-byte headers (checksums verified) without reading the
data, so a shard's structure is checked at disk speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Iterator

BLOCK = 512
RECORD = 20 * BLOCK


@dataclass(frozen=True)
class TarMember:
    """One regular file inside a tar: its name, where its data starts, and how long it is."""

    name: str
    offset: int  # byte offset of the data (header offset + 512)
    size: int


def split_name(name: str) -> tuple[str, str]:
    """``"dir/key.cls"`` -> ``("dir/key", "cls")``: the sample key ends at the first dot of the
    base name (the rule of both webdataset and DALI's ``wds2idx``)."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def member_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a regular file with fixed, clock-free metadata.

    Byte-identical to ``tarfile.TarInfo(name).tobuf(USTAR_FORMAT)`` with size set, mtime 0,
    mode 0644, uid/gid 0 and empty user/group names (``tests/test_shards_format.py`` checks it),
    built directly because it runs twice per sample.
    """
    raw = name.encode("ascii")
    if len(raw) > 100:
        raise ValueError(f"member name longer than 100 bytes: {name!r}")
    header = bytearray(
        raw.ljust(100, b"\0")
        + b"0000644\0"  # mode
        + b"0000000\0"  # uid
        + b"0000000\0"  # gid
        + b"%011o\0" % size
        + b"00000000000\0"  # mtime
        + b"        "  # checksum placeholder
        + b"0"  # regular file
        + b"\0" * 100  # linkname
        + b"ustar\x0000"
        + b"\0" * 64  # uname, gname
        + b"\0" * 16  # devmajor, devminor: empty for regular files, as tarfile writes them
        + b"\0" * 167  # prefix + padding
    )
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


class TarShardWriter:
    """Append members to an open binary file; ``close()`` writes the end-of-archive blocks.

    ``members`` lists what was written (name, data offset, size) in order.
    """

    def __init__(self, fileobj: IO[bytes]):
        self.fileobj = fileobj
        self.pos = 0
        self.members: list[TarMember] = []

    def _write(self, data: bytes) -> None:
        self.fileobj.write(data)
        self.pos += len(data)

    def add(self, name: str, data: bytes) -> TarMember:
        self._write(member_header(name, len(data)))
        member = TarMember(name, self.pos, len(data))
        self._write(data)
        pad = -len(data) % BLOCK
        if pad:
            self._write(b"\0" * pad)
        self.members.append(member)
        return member

    def close(self) -> int:
        """Finish the archive; returns its total size in bytes."""
        self._write(b"\0" * (2 * BLOCK))
        pad = -self.pos % RECORD
        if pad:
            self._write(b"\0" * pad)
        return self.pos


class TarFormatError(Exception):
    """The file is not a well-formed tar (message says where)."""


def _parse_octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").lstrip(b" ")
    if not field:
        return 0
    if field[0] & 0x80:  # GNU base-256 for large numbers
        return int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
    return int(field, 8)


def read_members(f: IO[bytes], file_size: int) -> Iterator[TarMember]:
    """Yield the regular-file members of an open tar, verifying header checksums and bounds.

    GNU long names (``././@LongLink``) and pax headers are followed; directories, links and other
    entries are skipped, like ``wds2idx`` does.
    """
    pos = 0
    long_name: str | None = None
    pax_name: str | None = None
    while True:
        f.seek(pos)
        header = f.read(BLOCK)
        if len(header) < BLOCK:
            raise TarFormatError(f"ends at byte {pos} without the end-of-archive blocks")
        if header == b"\0" * BLOCK:
            return
        try:
            stored = _parse_octal(header[148:156])
        except ValueError:
            raise TarFormatError(f"header at byte {pos} is not a tar header") from None
        computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if stored != computed:
            raise TarFormatError(f"header at byte {pos} has a bad checksum (corrupt data or not a tar)")
        try:
            size = _parse_octal(header[124:136])
        except ValueError:
            raise TarFormatError(f"header at byte {pos} has a bad size field") from None
        typeflag = header[156:157]
        data_offset = pos + BLOCK
        if data_offset + size > file_size:
            raise TarFormatError(f"member at byte {pos} runs past the end of the file (truncated tar)")
        name = header[0:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        if typeflag == b"L":
            f.seek(data_offset)
            long_name = f.read(size).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif typeflag in (b"x", b"g"):
            f.seek(data_offset)
            for line in f.read(size).decode("utf-8", "surrogateescape").splitlines():
                _, _, kv = line.partition(" ")
                if kv.startswith("path="):
                    pax_name = kv[5:] if typeflag == b"x" else pax_name
        else:
            if typeflag in (b"0", b"\0", b"7"):
                text = long_name or pax_name or name.decode("utf-8", "surrogateescape")
                yield TarMember(text, data_offset, size)
            long_name = pax_name = None
        pos = data_offset + size + (-size % BLOCK)
