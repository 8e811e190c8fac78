"""The streaming fetcher: whole objects fetched ahead of use into a bounded folder, evicted after use.

A :class:`ShardStream` is handed an (endless) sequence of :class:`StreamItem` (a name, its size and
sha256, and a tag the caller counts by, e.g. the epoch) and yields them *in that order* as local files:

* **one GET each**: every item is downloaded whole through the :class:`~dino_pipe.storage.store.Store`
  protocol, sha256-checked as it streams in (the same check as the whole-set cache,
  :mod:`dino_pipe.storage.cache`), renamed into place only when complete and checked;
* **ahead of use**: up to ``window`` items are fetched or held at once, by ``threads`` downloads;
* **bounded**: the bytes of the items fetched, in flight or in use never exceed ``max_bytes`` (a
  download starts only once its size fits; the window shrinks to what fits), so the folder never
  holds more than the bound; an item larger than the bound is one UserError line;
* **evicted**: :meth:`ShardStream.release` deletes an item's file once its reader is done with it.

This module knows nothing of shard sets: the caller (``dino_pipe.data.streaming``) decides which items
come in which order. :class:`FetchStats` counts GETs and bytes per tag, the fetch rate and the depth
(items downloaded and waiting to be read).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dino_pipe.errors import UserError
from dino_pipe.storage.cache import download_checked
from dino_pipe.storage.store import Store


@dataclass(frozen=True)
class StreamItem:
    """One object to fetch: its key in the store, its size and sha256 (as the manifest says), and a tag
    the fetch is counted under (the epoch)."""

    name: str
    size: int
    sha256: str
    tag: int = 0


@dataclass
class FetchStats:
    """What a stream fetched: GETs, bytes and object names per tag; totals; the current depth."""

    per_tag: dict[int, dict] = field(default_factory=dict)
    bytes_total: int = 0
    gets_total: int = 0
    fetch_seconds: float = 0.0
    depth: int = 0
    """Items downloaded and not yet handed to the reader (how far the prefetch is ahead)."""
    started: float = field(default_factory=time.monotonic)

    def add(self, item: StreamItem, seconds: float) -> None:
        entry = self.per_tag.setdefault(item.tag, {"gets": 0, "bytes": 0, "names": []})
        entry["gets"] += 1
        entry["bytes"] += item.size
        entry["names"].append(item.name)
        self.gets_total += 1
        self.bytes_total += item.size
        self.fetch_seconds += seconds

    def snapshot(self) -> dict:
        """Plain numbers for logs: ``bytes``, ``gets``, ``mb_per_s`` (since the stream started), ``depth``."""
        wall = max(time.monotonic() - self.started, 1e-9)
        return {"bytes": self.bytes_total, "gets": self.gets_total, "mb_per_s": self.bytes_total / 1e6 / wall,
                "depth": self.depth}

    def per_epoch(self) -> dict[str, dict]:
        """``{tag: {"gets": n, "bytes": b}}`` (names left out), for the run summary."""
        return {str(t): {"gets": e["gets"], "bytes": e["bytes"]} for t, e in sorted(self.per_tag.items())}


def check_bound(max_bytes: int, largest: int, what: str) -> None:
    """One line when an item of ``largest`` bytes cannot fit in the bound (nothing could ever be fetched)."""
    if largest > max_bytes:
        raise UserError(f"{what}: the stream cache bound ({max_bytes / 1e6:.1f} MB) is smaller than the largest "
                        f"shard ({largest / 1e6:.1f} MB); raise data.cache_gb or re-shard with smaller shards")


class ShardStream:
    """Fetch ``items`` in order into ``folder`` ahead of use, never holding more than ``max_bytes``.

    ``next()`` returns the next item's local path (waiting for its download); ``release(path)`` deletes
    it. ``folder`` is emptied first (files of a killed run). ``close()`` stops the downloads and empties it.
    """

    def __init__(self, store: Store, folder: Path, items: Iterator[StreamItem], *, max_bytes: int, window: int,
                 threads: int, stats: FetchStats | None = None):
        self.store, self.folder, self.max_bytes = store, Path(folder), int(max_bytes)
        self.window, self.stats = max(1, int(window)), stats or FetchStats()
        self._items = iter(items)
        self._cond = threading.Condition()
        self._held = 0  # bytes reserved: in flight, downloaded, or in use
        self._count = 0  # items in flight, downloaded, or in use
        self._queue: list[tuple[StreamItem, Future]] = []
        self._sizes: dict[Path, int] = {}
        self._closed = False
        self._seq = 0  # local file names are numbered: one shard can come twice in a window (wrap-around)
        self._error: BaseException | None = None
        if self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(threads)), thread_name_prefix="shard-stream")
        self._scheduler = threading.Thread(target=self._schedule, name="shard-stream-scheduler", daemon=True)
        self._scheduler.start()

    # -- the scheduler thread ---------------------------------------------------------------------
    def _schedule(self) -> None:
        try:
            for item in self._items:
                check_bound(self.max_bytes, item.size, self.store.describe(item.name))
                with self._cond:
                    self._cond.wait_for(lambda it=item: self._closed or (
                        self._count < self.window and self._held + it.size <= self.max_bytes))
                    if self._closed:
                        return
                    self._held += item.size
                    self._count += 1
                    self._seq += 1
                    self._queue.append((item, self._pool.submit(self._fetch, item, self._seq)))
                    self._cond.notify_all()
        except BaseException as e:  # noqa: BLE001  (handed to the reader by next())
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _fetch(self, item: StreamItem, seq: int) -> Path:
        dest = self.folder / f"{seq:09d}-{item.name}"
        t0 = time.monotonic()
        download_checked(self.store, item.name, dest, item.sha256, item.size, self.store.url)
        with self._cond:
            self.stats.add(item, time.monotonic() - t0)
            self.stats.depth += 1
        return dest

    # -- the reader's side ------------------------------------------------------------------------
    def next(self) -> tuple[StreamItem, Path]:
        """The next item in order and its local file, once downloaded and checked."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._error is not None or self._closed)
            if not self._queue:
                if self._error is not None:
                    raise self._error
                raise UserError("the shard stream was closed")
            item, future = self._queue.pop(0)
        path = future.result()  # a failed download raises its one-line UserError here
        with self._cond:
            self.stats.depth -= 1
            self._sizes[path] = item.size
        return item, path

    def release(self, path: Path) -> None:
        """Delete an item's file (its reader is done with it) and let the next download start."""
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
        with self._cond:
            self._held -= self._sizes.pop(Path(path), 0)
            self._count -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """Stop fetching; wait for the downloads in flight; delete every file of this stream."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._scheduler.join(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)


def fetch_one(store: Store, folder: Path, item: StreamItem, stats: FetchStats | None = None) -> Path:
    """Fetch one item now (one GET, sha256-checked) into ``folder``; the caller deletes it when done."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    dest = folder / item.name
    download_checked(store, item.name, dest, item.sha256, item.size, store.url)
    if stats is not None:
        stats.add(item, time.monotonic() - t0)
    return dest
