"""Open a shard set for reading: its manifest, its tar/index pairs, and checks that fail with one line.

A shard set is a folder with ``shard-NNNNNN.tar`` (WebDataset samples ``<key>.jpg`` and, when
labelled, ``<key>.cls``), a DALI index ``shard-NNNNNN.idx`` beside each tar, and ``manifest.json``
(``num_samples``, ``classes``, ``labeled``, ``shards: [{file, index, samples, bytes, sha256}]``).

Everything the data package needs from the shards package goes through :func:`read_manifest` (which
delegates to ``dino_pipe.shards.manifest.load_manifest``) and :func:`open_shardset`, which checks
what can be checked cheaply (files present, sizes as the manifest says, at least one sample) so a
broken set gives one :class:`UserError` line instead of a DALI stack dump. What only decoding
reveals (a garbage JPEG) is caught where the pipeline runs (:func:`dino_pipe.data.graph.dali_errors`).

Content check: before a process first reads a shard, :func:`check_sha256` compares the tar's
sha256 with the manifest (a tar changed after sharding, even at the same size, is refused), and
in a labelled set every ``.cls`` is checked to be a class number (read at the offsets the ``.idx``
gives). Shards are hashed in parallel threads; a verified shard (same path, size and mtime) is not
hashed again in the same process. sha256 runs at ~1.2 GB per CPU second: 0.2-0.4 % of the CPU time
of loading the same images (``tools/bench_content_check.py``).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dino_pipe.errors import UserError


@dataclass(frozen=True)
class ShardSet:
    """A validated shard set: tar and index paths in shard order plus the manifest's facts."""

    root: Path
    tars: tuple[str, ...]
    indexes: tuple[str, ...]
    shard_samples: tuple[int, ...]
    num_samples: int
    classes: tuple[str, ...]
    labeled: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sample_index(self) -> dict[tuple[str, str], int]:
        """``(tar file name, member name) -> global sample index`` in shard-set order.

        Read from the ``.idx`` files (one line per sample, components as ``ext offset size name``);
        DALI's ``source_info`` property names the tar and the member, so a decoded sample can be
        traced back to its position in the set.
        """
        out: dict[tuple[str, str], int] = {}
        g = 0
        for tar, idx in zip(self.tars, self.indexes):
            name = Path(tar).name
            lines = Path(idx).read_text().splitlines()[1:]
            for line in lines:
                tok = line.split()
                for k in range(0, len(tok) - 3, 4):
                    if tok[k] == "jpg":
                        out[(name, tok[k + 3])] = g
                g += 1
        return out


def read_manifest(root: Path) -> dict:
    """The manifest of the shard set in ``root`` as a dict (the one place the data package reads it).

    Delegates to the shards package's :func:`dino_pipe.shards.manifest.load_manifest` (schema check,
    missing folder / manifest / empty set as one-line UserErrors).
    """
    from dino_pipe.shards.manifest import load_manifest

    return load_manifest(root)


def content_identity(root: str | os.PathLike) -> str:
    """What the shard set in ``root`` (a folder, or a URL when streamed) holds, as a short hash of its
    manifest's shard list (names, sizes, sha256s, samples) and classes: the same for a copy moved elsewhere
    or fetched from ``s3://`` into the cache, different for another set. A resumed run compares it with the
    one it was trained on."""
    import json

    from dino_pipe.storage.url import is_remote

    if is_remote(root):
        from dino_pipe.shards.fetch import read_manifest_at

        m = read_manifest_at(str(root))[1]
    else:
        m = read_manifest(Path(root))
    shards = [[e.get("file"), e.get("bytes"), e.get("sha256"), e.get("samples")] for e in m["shards"]]
    text = json.dumps({"shards": shards, "classes": m.get("classes") or [], "num_samples": m["num_samples"]})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


_verified: set[tuple] = set()  # (path, size, mtime_ns, sha256) already checked in this process


def check_sha256(path: str | os.PathLike, expected: str, what: str | None = None) -> None:
    """Raise a one-line :class:`UserError` unless the file at ``path`` has sha256 ``expected``.

    The check every reader of a shard runs before first using it (local shard sets here, downloaded
    ones wherever they land). A file already verified unchanged (path, size, mtime) is not re-read.
    """
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, expected)
    if key in _verified:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise UserError(f"{what or path}: content differs from the manifest (sha256 {actual[:16]}..., manifest says "
                        f"{expected[:16]}...); the file changed after sharding: re-shard, or run `dino-pipe verify`")
    _verified.add(key)


def _member_at(f: BinaryIO, offset: int, name: str) -> bool:
    """The tar member whose data starts at ``offset`` is named ``name`` (its ustar header is the 512 bytes
    before; names over 100 bytes, which need a long-name record, are not compared)."""
    if len(name.encode()) >= 100:
        return True
    if offset < 512:
        return False
    f.seek(offset - 512)
    header = f.read(512)
    if len(header) < 512:
        return False
    base, prefix = header[:100].split(b"\0")[0], header[345:500].split(b"\0")[0]
    return (prefix + b"/" + base if prefix else base) == name.encode()


def _mismatch(tar: str | os.PathLike, idx: str | os.PathLike, what: str, member: str) -> UserError:
    """The one line for an index that does not describe its tar (it names the index, not a label)."""
    return UserError(f"{what}: index {Path(idx).name} does not match {Path(tar).name} (member {member} is not at the "
                     f"offset it gives; an index of another shard?); rebuild it (wds2idx {Path(tar).name} "
                     f"{Path(idx).name}) or re-shard")


def check_index(tar: str | os.PathLike, idx: str | os.PathLike, what: str) -> None:
    """The first and last samples of ``idx`` are where it says in ``tar`` (catches an index of another shard;
    a labelled set's :func:`check_labels` checks every label member this way)."""
    with open(idx, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()[1:]
    with open(tar, "rb") as f:
        for line in {lines[0], lines[-1]} if lines else ():
            tok = line.split()
            try:
                found = len(tok) >= 4 and _member_at(f, int(tok[1]), tok[3])
            except ValueError:
                raise UserError(f"{what}: index {Path(idx).name} is damaged (rebuild it: wds2idx)") from None
            if not found:
                raise _mismatch(tar, idx, what, tok[3] if len(tok) >= 4 else "?")


def check_labels(tar: str | os.PathLike, idx: str | os.PathLike, num_classes: int, what: str) -> None:
    """Every ``.cls`` member of ``tar`` (located through its ``.idx``) is an integer in ``[0, num_classes)``."""
    st, ist = os.stat(tar), os.stat(idx)
    key = ("labels", os.path.realpath(tar), st.st_size, st.st_mtime_ns, ist.st_size, ist.st_mtime_ns, num_classes)
    if key in _verified:
        return
    with open(idx, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()[1:]
    with open(tar, "rb") as f:
        for line in lines:
            tok = line.split()
            for k in range(0, len(tok) - 3, 4):
                if tok[k] != "cls":
                    continue
                try:
                    f.seek(int(tok[k + 1]))
                    size = int(tok[k + 2])
                except ValueError:
                    raise UserError(f"{what}: index {Path(idx).name} is damaged (rebuild it: wds2idx)") from None
                if not _member_at(f, int(tok[k + 1]), tok[k + 3]):
                    raise _mismatch(tar, idx, what, tok[k + 3])
                f.seek(int(tok[k + 1]))
                text = f.read(min(size, 32)).strip()
                if not text.isdigit() or (num_classes and int(text) >= num_classes):
                    sample = tok[k + 3].rsplit(".", 1)[0]
                    in_range = f"a class number in 0..{num_classes - 1} (manifest lists {num_classes} classes)" \
                        if num_classes else "an integer"
                    raise UserError(f"{what} sample {sample}: label {text.decode('utf-8', 'replace')!r} is not "
                                    f"{in_range}; fix the .cls or re-shard")
    _verified.add(key)


def check_content(shards: "ShardSet", sha256s: list[str | None], part: tuple[int, int] = (0, 1)) -> None:
    """sha256 of every shard vs the manifest, each index against its tar, and (labelled sets) every label in
    range; parallel threads.

    ``part=(rank, world_size)``: check only every ``world_size``-th shard from ``rank`` (the ranks of a
    job together check every shard once, each with its share of the cores)."""
    from dino_pipe.cpus import available_cores

    def one(i: int) -> None:
        what = f"shard set {shards.root}: {Path(shards.tars[i]).name}"
        if sha256s[i]:
            check_sha256(shards.tars[i], sha256s[i], what)
        if shards.labeled:
            check_labels(shards.tars[i], shards.indexes[i], shards.num_classes, what)
        else:
            check_index(shards.tars[i], shards.indexes[i], what)

    rank, world = part
    mine = range(rank, len(shards.tars), world)
    if not mine:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(len(mine), available_cores() // world))) as pool:
        for _ in pool.map(one, mine):  # first failure (in shard order) raises
            pass


def open_shardset(path: str | Path, check: bool = True, part: tuple[int, int] = (0, 1)) -> ShardSet:
    """Read and check the shard set in ``path``; raise one-line :class:`UserError` on any defect.

    ``check``: also the content check (sha256 vs manifest, labels in range; see the module docstring), of
    this process's ``part=(rank, world_size)`` of the shards. ``s3://bucket/prefix`` is first fetched into
    the shard cache (:mod:`dino_pipe.shards.fetch`)."""
    from dino_pipe.shards.fetch import resolve_shardset

    root = resolve_shardset(path)
    manifest = read_manifest(root)
    entries = manifest["shards"]
    if not entries or int(manifest["num_samples"]) <= 0:
        raise UserError(f"shard set {root}: it holds no samples (manifest num_samples=0); shard a non-empty tree")
    tars, idxs, counts, sha256s = [], [], [], []
    for e in entries:
        tar = root / e["file"]
        idx = root / e.get("index", Path(e["file"]).with_suffix(".idx").name)
        if not tar.is_file():
            raise UserError(f"shard set {root}: {tar.name} is listed in manifest.json but missing")
        if not idx.is_file():
            raise UserError(
                f"shard set {root}: index {idx.name} is missing (rebuild it: wds2idx {tar.name} {idx.name})"
            )
        size = tar.stat().st_size
        if "bytes" in e and size != int(e["bytes"]):
            raise UserError(f"shard set {root}: {tar.name} has {size} bytes, manifest says {e['bytes']} "
                            "(truncated or replaced; run `dino-pipe verify` and re-shard)")
        tars.append(str(tar))
        idxs.append(str(idx))
        counts.append(int(e.get("samples", 0)))
        sha256s.append(e.get("sha256"))
    num = int(manifest["num_samples"])
    if all(counts) and sum(counts) != num:
        raise UserError(f"shard set {root}: shards hold {sum(counts)} samples, manifest num_samples says {num}")
    classes = tuple(manifest.get("classes") or ())
    labeled = bool(manifest.get("labeled", bool(classes)))
    shards = ShardSet(root=root, tars=tuple(tars), indexes=tuple(idxs), shard_samples=tuple(counts),
                      num_samples=num, classes=classes, labeled=labeled)
    if check:
        check_content(shards, sha256s, part)
    return shards
