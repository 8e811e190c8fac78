"""Open a shard set for reading: its manifest, its tar/index pairs, and checks that fail with one line.

A shard set is a folder with ``shard-NNNNNN.tar`` (WebDataset samples ``<key>.jpg`` and, when
labelled, ``<key>.cls``), a DALI index ``shard-NNNNNN.idx`` beside each tar, and ``manifest.json``
(``num_samples``, ``classes``, ``labeled``, ``shards: [{file, index, samples, bytes, sha256}]``).

Everything the data room needs from the shard room goes through :func:`read_manifest` (which
delegates to ``dino_pipe.shards.manifest.load_manifest``) and :func:`open_shardset`, which checks what can be checked cheaply (files present, sizes as the
manifest says, at least one sample) so a broken set gives one :class:`UserError` line instead of
a DALI stack dump. What only decoding reveals (a garbage JPEG) is caught where the pipeline
runs (:func:`dino_pipe.data.graph.dali_errors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    """The manifest of the shard set in ``root`` as a dict (the one place the data room reads it).

    Delegates to the shard room's :func:`dino_pipe.shards.manifest.load_manifest` (schema check,
    missing folder / manifest / empty set as one-line UserErrors).
    """
    from dino_pipe.shards.manifest import load_manifest

    return load_manifest(root)


def open_shardset(path: str | Path) -> ShardSet:
    """Read and check the shard set in ``path``; raise one-line :class:`UserError` on any defect.

    ``s3://bucket/prefix`` is first fetched into the shard cache (:mod:`dino_pipe.storage.cache`)."""
    from dino_pipe.storage.cache import resolve_shardset

    root = resolve_shardset(path)
    manifest = read_manifest(root)
    entries = manifest["shards"]
    if not entries or int(manifest["num_samples"]) <= 0:
        raise UserError(f"shard set {root}: it holds no samples (manifest num_samples=0); shard a non-empty tree")
    tars, idxs, counts = [], [], []
    for e in entries:
        tar = root / e["file"]
        idx = root / e.get("index", Path(e["file"]).with_suffix(".idx").name)
        if not tar.is_file():
            raise UserError(f"shard set {root}: {tar.name} is listed in manifest.json but missing")
        if not idx.is_file():
            raise UserError(f"shard set {root}: index {idx.name} is missing (rebuild it: wds2idx {tar.name} {idx.name})")
        size = tar.stat().st_size
        if "bytes" in e and size != int(e["bytes"]):
            raise UserError(f"shard set {root}: {tar.name} has {size} bytes, manifest says {e['bytes']} "
                            "(truncated or replaced; run `dino-pipe verify` and re-shard)")
        tars.append(str(tar))
        idxs.append(str(idx))
        counts.append(int(e.get("samples", 0)))
    num = int(manifest["num_samples"])
    if all(counts) and sum(counts) != num:
        raise UserError(f"shard set {root}: shards hold {sum(counts)} samples, manifest num_samples says {num}")
    classes = tuple(manifest.get("classes") or ())
    labeled = bool(manifest.get("labeled", bool(classes)))
    return ShardSet(root=root, tars=tuple(tars), indexes=tuple(idxs), shard_samples=tuple(counts),
                    num_samples=num, classes=classes, labeled=labeled)
