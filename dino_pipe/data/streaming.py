"""Streaming a shard set: each rank's shards per epoch, its samples, and the seeded sample shuffle buffer.

**Own shards.** Epoch ``e`` shuffles the set's shards with a permutation drawn from ``(seed, e)`` (the
same on every rank); rank ``r`` of ``w`` owns the shards at positions ``r, r + w, r + 2w, …`` of it and
fetches only those (:func:`epoch_reads`).

**Equal steps.** Every rank takes exactly ``S = floor(floor(N / w) / B) * B`` samples per epoch (the
whole batches of its equal share of the ``N`` samples), reading its own shards in order: a rank whose
shards hold more stops after ``S`` (the rest of its shards is not fetched that epoch), one whose shards
hold fewer wraps around to its first shard again (fetched once more). So every rank runs the same
number of steps, ``floor(floor(N / w) / B)``, the same as the whole-set reader.

**Shuffle buffer.** Samples pass through a buffer of ``data.shuffle_buffer`` samples per rank: once it
is full (or the epoch's stream is done) each sample handed out is drawn from it at a position given by a
hash of ``(seed, rank, epoch, count)`` (no generator state), and its place is taken by the next sample
read. The buffer is emptied at each epoch end, so an epoch holds exactly its own ``S`` samples.

**State.** :meth:`SampleStream.state` is plain data: the epoch, the position in the rank's reads (read
``k``, sample ``j``), samples handed out this epoch, and the keys ``(k, j)`` the buffer holds, in order.
:meth:`SampleStream.restore` fetches the shards those keys come from again (one GET each), reads those
samples back, and continues the stream at read ``k``: the samples that follow are exactly those of an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dino_pipe.errors import UserError
from dino_pipe.shards.tar import read_members, split_name
from dino_pipe.storage.store import Store
from dino_pipe.storage.stream import FetchStats, ShardStream, StreamItem, fetch_one


@dataclass(frozen=True)
class StreamSet:
    """A shard set read by streaming: its location and the manifest's facts (no local files)."""

    root: str
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    sha256s: tuple[str, ...]
    shard_samples: tuple[int, ...]
    num_samples: int
    classes: tuple[str, ...]
    labeled: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_bytes(self) -> int:
        return sum(self.sizes)

    def item(self, shard: int, epoch: int) -> StreamItem:
        return StreamItem(self.names[shard], self.sizes[shard], self.sha256s[shard], epoch)


def open_streamset(location: str | os.PathLike) -> tuple[Store, StreamSet]:
    """The store and manifest facts of the shard set at ``location`` (URL or folder); one line when unusable."""
    from dino_pipe.shards.fetch import read_manifest_at

    store, m = read_manifest_at(str(location))
    entries = m["shards"]
    if not entries or int(m["num_samples"]) <= 0:
        raise UserError(f"shard set {store.url}: it holds no samples (manifest num_samples=0); shard a non-empty tree")
    classes = tuple(m.get("classes") or ())
    return store, StreamSet(
        root=store.url, names=tuple(e["file"] for e in entries), sizes=tuple(int(e["bytes"]) for e in entries),
        sha256s=tuple(e["sha256"] for e in entries), shard_samples=tuple(int(e["samples"]) for e in entries),
        num_samples=int(m["num_samples"]), classes=classes, labeled=bool(m.get("labeled", bool(classes))))


def _hash64(*parts: object) -> int:
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def samples_per_rank(num_samples: int, world_size: int, batch_size: int) -> int:
    """``S``: the samples every rank takes per epoch (whole batches of its equal share)."""
    return (num_samples // world_size) // batch_size * batch_size


def epoch_reads(shards: StreamSet, *, seed: int, epoch: int, rank: int, world_size: int,
                batch_size: int) -> list[tuple[int, int]]:
    """Rank ``rank``'s reads of epoch ``epoch``: ``(shard index, samples taken from its start)`` in order."""
    rng = np.random.default_rng([_hash64("shards", seed, epoch) & 0xFFFFFFFF, epoch])
    mine = [int(s) for s in rng.permutation(len(shards.names))[rank::world_size] if shards.shard_samples[s] > 0]
    if not mine:
        raise UserError(f"shard set {shards.root}: {len(shards.names)} shards for {world_size} ranks leave rank "
                        f"{rank} none in epoch {epoch}; re-shard with more (smaller) shards or use fewer processes")
    reads, left, i = [], samples_per_rank(shards.num_samples, world_size, batch_size), 0
    while left > 0:
        s = mine[i % len(mine)]
        take = min(shards.shard_samples[s], left)
        reads.append((s, take))
        left -= take
        i += 1
    return reads


@dataclass
class Sample:
    """One sample as the graph takes it: the JPEG bytes, the label's bytes (None when unlabelled), its key."""

    jpg: np.ndarray
    label: np.ndarray | None
    key: tuple[int, int]


class ShardFile:
    """An open, fetched shard: where each of its first ``take`` samples' components lie, read one at a time."""

    def __init__(self, path: Path, take: int, labeled: bool, what: str):
        self.path, self.labeled = Path(path), labeled
        self.file = open(path, "rb")
        exts = ("jpg", "cls") if labeled else ("jpg",)
        groups: dict[str, dict[str, tuple[int, int]]] = {}
        for m in read_members(self.file, os.fstat(self.file.fileno()).st_size):
            key, ext = split_name(m.name)
            if key not in groups and len(groups) == take:
                break
            groups.setdefault(key, {})[ext] = (m.offset, m.size)
        self.parts = []
        for key, parts in groups.items():
            if any(e not in parts for e in exts):
                self.close()
                raise UserError(f"{what}: sample {key} has no .{' or .'.join(exts)}; re-shard the set")
            self.parts.append([parts[e] for e in exts])
        if len(self.parts) < take:
            self.close()
            raise UserError(f"{what}: holds {len(self.parts)} samples, manifest.json says at least {take}; "
                            "re-shard the set")

    def sample(self, j: int, key: tuple[int, int]) -> Sample:
        """Sample ``j`` of the shard, read from the file now."""
        got = []
        for offset, size in self.parts[j]:
            self.file.seek(offset)
            got.append(np.frombuffer(self.file.read(size), dtype=np.uint8))
        return Sample(got[0], got[1] if self.labeled else None, key)

    def close(self) -> None:
        self.file.close()


class SampleStream:
    """One rank's endless stream of samples, epoch after epoch, through the shuffle buffer (module docstring)."""

    def __init__(self, store: Store, shards: StreamSet, folder: Path, *, seed: int, rank: int, world_size: int,
                 batch_size: int, buffer: int, max_bytes: int, window: int, threads: int):
        self.store, self.shards, self.folder = store, shards, Path(folder)
        self.seed, self.rank, self.world_size, self.batch_size = seed, rank, world_size, batch_size
        self.buffer_size = max(1, int(buffer))
        self.per_epoch = samples_per_rank(shards.num_samples, world_size, batch_size)
        self.max_bytes, self.window, self.threads = max_bytes, window, threads
        self.stats = FetchStats()
        self._reads_cache: dict[int, list[tuple[int, int]]] = {}
        self.epoch, self.k, self.j, self.emitted = 0, 0, 0, 0
        self.buf: list[Sample] = []
        self._stream: ShardStream | None = None
        self._open: tuple[Path, list[tuple[bytes, bytes | None]]] | None = None

    def reads(self, epoch: int) -> list[tuple[int, int]]:
        if epoch not in self._reads_cache:
            self._reads_cache = {e: r for e, r in self._reads_cache.items() if e >= epoch - 1}
            self._reads_cache[epoch] = epoch_reads(self.shards, seed=self.seed, epoch=epoch, rank=self.rank,
                                                   world_size=self.world_size, batch_size=self.batch_size)
        return self._reads_cache[epoch]

    def _items(self, epoch: int, k: int) -> Iterator[StreamItem]:
        """The shards to fetch from read ``k`` of ``epoch`` on, epoch after epoch (run by the fetch thread)."""
        while True:
            reads = epoch_reads(self.shards, seed=self.seed, epoch=epoch, rank=self.rank,
                                world_size=self.world_size, batch_size=self.batch_size)
            for shard, _ in reads[k:]:
                yield self.shards.item(shard, epoch)
            epoch, k = epoch + 1, 0

    def _start(self) -> None:
        if self._stream is None:
            self._stream = ShardStream(self.store, self.folder / "stream", self._items(self.epoch, self.k),
                                       max_bytes=self.max_bytes, window=self.window, threads=self.threads,
                                       stats=self.stats)

    def _pull(self) -> Sample:
        """The next sample of this epoch's reads; a shard's file is deleted once its last sample is read."""
        self._start()
        shard, take = self.reads(self.epoch)[self.k]
        if self._open is None:
            item, path = self._stream.next()
            assert item.name == self.shards.names[shard] and item.tag == self.epoch, (item, shard, self.epoch)
            self._open = ShardFile(path, take, self.shards.labeled, self.store.describe(item.name))
        sample = self._open.sample(self.j, (self.k, self.j))
        self.j += 1
        if self.j == take:
            self._open.close()
            self._stream.release(self._open.path)
            self.k, self.j, self._open = self.k + 1, 0, None
        return sample

    def next(self) -> Sample:
        """The next sample handed out (the epoch rolls over after ``per_epoch`` of them)."""
        if self.emitted == self.per_epoch:
            self.epoch, self.k, self.j, self.emitted = self.epoch + 1, 0, 0, 0
        reads = self.reads(self.epoch)
        while self.k < len(reads) and len(self.buf) < self.buffer_size:
            self.buf.append(self._pull())
        pos = _hash64("buffer", self.seed, self.rank, self.epoch, self.emitted) % len(self.buf)
        out = self.buf[pos]
        self.buf[pos] = self.buf[-1]
        self.buf.pop()
        self.emitted += 1
        return out

    def batch(self) -> list[Sample]:
        return [self.next() for _ in range(self.batch_size)]

    # -- state ----------------------------------------------------------------------------------
    def state(self) -> dict:
        """Where the stream is, as plain data (module docstring)."""
        return {"epoch": self.epoch, "k": self.k, "j": self.j, "emitted": self.emitted,
                "buffer": [list(s.key) for s in self.buf], "buffer_size": self.buffer_size}

    def rewind(self) -> None:
        """Back to the start of epoch 0, the buffer empty (as a new stream)."""
        self.restore({"epoch": 0, "k": 0, "j": 0, "emitted": 0, "buffer": []})

    def restore(self, state: dict) -> None:
        """Continue from ``state``: refetch the shards its buffered samples come from (one GET each)."""
        self.close()
        self.epoch, self.k, self.j, self.emitted = (int(state[n]) for n in ("epoch", "k", "j", "emitted"))
        keys = [tuple(int(x) for x in key) for key in state["buffer"]]
        reads = self.reads(self.epoch)
        samples: dict[tuple[int, int], Sample] = {}
        for k in sorted({k for k, _ in keys}):
            shard, take = reads[k]
            item = self.shards.item(shard, self.epoch)
            path = fetch_one(self.store, self.folder / "restore", item, self.stats)
            f = ShardFile(path, take, self.shards.labeled, self.store.describe(item.name))
            try:
                for kk, j in keys:
                    if kk == k:
                        samples[(k, j)] = f.sample(j, (k, j))
            finally:
                f.close()
                path.unlink(missing_ok=True)
        self.buf = [samples[key] for key in keys]

    def close(self) -> None:
        """Stop fetching and delete this stream's files."""
        if self._open is not None:
            self._open.close()
            self._open = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None
