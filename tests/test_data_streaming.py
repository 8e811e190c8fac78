"""Streaming without a server: each rank's shards per epoch and the equal-steps rule, the bounded prefetching
fetcher, and the sample stream's saved state (a restored stream continues with exactly the same samples)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from dino_pipe.data.streaming import SampleStream, StreamSet, epoch_reads, open_streamset, samples_per_rank
from dino_pipe.errors import UserError
from dino_pipe.storage.store import open_store
from dino_pipe.storage.stream import ShardStream, StreamItem


def _set(samples: list[int]) -> StreamSet:
    n = len(samples)
    return StreamSet(root="mem://set", names=tuple(f"shard-{i:06d}.tar" for i in range(n)), sizes=(100,) * n,
                     sha256s=("0" * 64,) * n, shard_samples=tuple(samples), num_samples=sum(samples),
                     classes=(), labeled=False)


@pytest.mark.parametrize("samples", [[8] * 10, [13, 1, 1, 9, 30, 2, 7, 5, 4]])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_rank_owns_its_shards_and_takes_the_same_samples(samples, world):
    shards, batch = _set(samples), 4
    per_rank = samples_per_rank(shards.num_samples, world, batch)
    assert per_rank == (sum(samples) // world) // batch * batch
    for epoch in range(3):
        owned = []
        for rank in range(world):
            reads = epoch_reads(shards, seed=5, epoch=epoch, rank=rank, world_size=world, batch_size=batch)
            assert reads == epoch_reads(shards, seed=5, epoch=epoch, rank=rank, world_size=world, batch_size=batch)
            assert sum(take for _, take in reads) == per_rank, "every rank takes exactly S samples"
            assert all(0 < take <= samples[s] for s, take in reads)
            assert all(take == samples[s] for s, take in reads[:-1]), "only the last read is cut short"
            owned.append({s for s, _ in reads})
        for a in range(world):
            for b in range(a + 1, world):
                assert not owned[a] & owned[b], "ranks read disjoint shards"
    orders = {tuple(s for s, _ in epoch_reads(shards, seed=5, epoch=e, rank=0, world_size=1, batch_size=batch))
              for e in range(4)}
    assert len(orders) > 1, "the shard order changes per epoch"


def test_a_rank_whose_shards_hold_too_few_samples_wraps_around_them():
    shards = _set([1, 1, 1, 1, 40, 40])  # the rank holding the small shards must wrap
    lengths = []
    for rank in range(2):
        reads = epoch_reads(shards, seed=0, epoch=0, rank=rank, world_size=2, batch_size=4)
        assert sum(t for _, t in reads) == 40
        lengths.append(len(reads))
    assert max(lengths) > 3, "a short rank reads its shards again"
    with pytest.raises(UserError, match="re-shard with more"):
        epoch_reads(_set([8, 8]), seed=0, epoch=0, rank=2, world_size=3, batch_size=1)


def _files(folder: Path, sizes: list[int]) -> list[StreamItem]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i, n in enumerate(sizes):
        data = bytes([i % 256]) * n
        (folder / f"f{i}.bin").write_bytes(data)
        items.append(StreamItem(f"f{i}.bin", n, hashlib.sha256(data).hexdigest(), tag=i // 4))
    return items


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` now (files that vanish while it is walked count as gone)."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


class FolderWatch:
    """A thread sampling the bytes under ``folder`` until stopped; ``peak`` is the largest sample."""

    def __init__(self, folder: Path):
        self.folder, self.peak, self.samples = folder, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, folder_bytes(self.folder))
            self.samples += 1
            time.sleep(0.001)

    def __enter__(self) -> "FolderWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_the_fetcher_keeps_order_and_never_holds_more_than_its_bound(tmp_path):
    items = _files(tmp_path / "src", [3000, 1000, 5000, 2000, 4000, 1000, 3000, 2500])
    bound, seen = 7000, []
    stream = ShardStream(open_store(tmp_path / "src"), tmp_path / "cache", iter(items), max_bytes=bound,
                         window=8, threads=3)
    with FolderWatch(tmp_path / "cache") as watch:
        try:
            for want in items:
                item, path = stream.next()
                assert item == want and path.read_bytes() == (tmp_path / "src" / want.name).read_bytes()
                time.sleep(0.02)  # a slow reader: the prefetch fills what the bound allows
                seen.append(stream.stats.depth)
                stream.release(path)
                assert not path.exists(), "released shards are deleted"
        finally:
            stream.close()
    assert 0 < watch.peak <= bound and watch.samples > 10
    assert max(seen) >= 1, "shards were fetched ahead of use"
    assert stream.stats.gets_total == len(items)
    assert stream.stats.per_epoch() == {"0": {"gets": 4, "bytes": 11000}, "1": {"gets": 4, "bytes": 10500}}


def test_a_bound_below_the_largest_shard_and_a_changed_shard_are_one_line(tmp_path):
    items = _files(tmp_path / "src", [1000, 9000])
    stream = ShardStream(open_store(tmp_path / "src"), tmp_path / "cache", iter(items), max_bytes=5000, window=2,
                         threads=1)
    try:
        stream.release(stream.next()[1])
        with pytest.raises(UserError, match=r"smaller than the largest shard .* raise data.cache_gb"):
            stream.next()
    finally:
        stream.close()
    (tmp_path / "src" / "f0.bin").write_bytes(b"x" * 1000)
    stream = ShardStream(open_store(tmp_path / "src"), tmp_path / "c2", iter(items[:1]), max_bytes=5000, window=2,
                         threads=1)
    try:
        with pytest.raises(UserError, match="does not match its sha256"):
            stream.next()
    finally:
        stream.close()
    assert not (tmp_path / "c2").exists()


def _stream(tiny_shardset: Path, folder: Path, rank: int = 0, world: int = 1) -> SampleStream:
    store, shards = open_streamset(tiny_shardset)
    return SampleStream(store, shards, folder, seed=3, rank=rank, world_size=world, batch_size=4, buffer=20,
                        max_bytes=max(shards.sizes) * 2, window=2, threads=2)


def test_a_restored_sample_stream_continues_with_the_same_samples(tiny_shardset, tmp_path):
    a = _stream(tiny_shardset, tmp_path / "a")
    try:
        first = [a.next() for _ in range(150)]  # 96 samples per epoch: into the second epoch
        state = a.state()
        rest = [a.next() for _ in range(60)]
    finally:
        a.close()
    epoch0 = [s.key for s in first[:96]]
    assert len(set(epoch0)) == 96, "an epoch hands out each of its samples once"
    assert epoch0 != sorted(epoch0), "samples are shuffled"
    assert state["buffer"] and state["epoch"] == 1
    b = _stream(tiny_shardset, tmp_path / "b")
    try:
        b.restore(state)
        again = [b.next() for _ in range(60)]
    finally:
        b.close()
    assert [s.key for s in again] == [s.key for s in rest]
    assert all((x.jpg == y.jpg).all() and (x.label == y.label).all() for x, y in zip(again, rest))


def _loader(tiny_shardset: Path, cache: Path, **over):
    from test_train_loop import tiny_cfg

    from dino_pipe.data.stream_loader import StreamViewLoader
    from dino_pipe.storage.cache import CacheSettings

    shard = max(p.stat().st_size for p in tiny_shardset.glob("*.tar"))
    cfg = tiny_cfg("data.read_mode=stream", "data.shuffle_buffer=12", "data.prefetch=3")
    settings = CacheSettings.resolve(str(cache), gb=2.5 * shard / 1e9, threads=2)
    return StreamViewLoader(str(tiny_shardset), cfg.data, settings=settings, **over)


def test_a_local_set_streams_and_the_loader_resumes_at_the_next_batch(tiny_shardset, tmp_path):
    """Saved mid-epoch while DALI and the fetcher run ahead; the rebuilt loader gives exactly the next batches."""
    import torch

    a = _loader(tiny_shardset, tmp_path / "cache")
    try:
        assert len(a) == 24
        it = iter(a)
        for _ in range(13):
            next(it)
        state = a.state_dict()
        rest = [b for b in it] + [b for _, b in zip(range(6), a)]  # the epoch's 11 batches and 6 of the next
        fetched = a.stats()
    finally:
        a.close()
    assert fetched["gets"] >= 4 and fetched["bytes"] > 0
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*")), "closing deletes the streamed shards"
    b = _loader(tiny_shardset, tmp_path / "cache")
    try:
        b.load_state_dict(state)
        again = [x for x in b] + [x for _, x in zip(range(6), b)]
    finally:
        b.close()
    assert len(again) == len(rest) == 17
    for x, y in zip(rest, again):
        assert torch.equal(x.labels, y.labels)
        assert all(torch.equal(u, v) for u, v in zip(x.views, y.views))
    c = _loader(tiny_shardset, tmp_path / "cache", seed=1)
    try:
        with pytest.raises(UserError, match="saved seed=0, now 1"):
            c.load_state_dict(state)
    finally:
        c.close()


def test_a_changed_shard_stops_streaming_with_one_line(tiny_shardset, tmp_path):
    import shutil

    copy = tmp_path / "set"
    shutil.copytree(tiny_shardset, copy)
    data = bytearray((copy / "shard-000001.tar").read_bytes())
    data[700] ^= 0xFF  # same size, one byte changed
    (copy / "shard-000001.tar").write_bytes(bytes(data))
    loader = _loader(copy, tmp_path / "cache")
    try:
        with pytest.raises(UserError, match=r"shard-000001.tar in the store does not match its sha256") as e:
            for _ in range(2):
                for _ in loader:
                    pass
        assert "\n" not in str(e.value)
    finally:
        loader.close()


def test_more_ranks_than_shards_is_one_line_at_once(tiny_shardset, tmp_path):
    with pytest.raises(UserError, match=r"3 shards for 4 ranks leave rank 3 none"):
        _loader(tiny_shardset, tmp_path / "cache", rank=3, world_size=4, local_world_size=1, batch_size=2)


def test_a_bound_below_a_shard_per_rank_is_one_line_at_once(tiny_shardset, tmp_path):
    from test_train_loop import tiny_cfg

    from dino_pipe.data.stream_loader import StreamViewLoader
    from dino_pipe.storage.cache import CacheSettings

    shard = max(p.stat().st_size for p in tiny_shardset.glob("*.tar"))
    settings = CacheSettings.resolve(str(tmp_path / "cache"), gb=1.5 * shard / 1e9)  # one shard, but two ranks
    with pytest.raises(UserError, match=r"2 process\(es\) on this node .*smaller than the largest shard"):
        StreamViewLoader(str(tiny_shardset), tiny_cfg("data.read_mode=stream").data, settings=settings, rank=0,
                         world_size=2)
