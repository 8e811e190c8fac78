"""The training loader in streaming mode: :class:`StreamViewLoader`.

The same DALI graph of view ops as :class:`~dino_pipe.data.loader.ViewLoader` (one graph definition for the
CPU and the GPU; only the source differs): the samples' encoded bytes and labels come from this rank's
:class:`~dino_pipe.data.streaming.SampleStream` through ``fn.external_source`` instead of DALI's webdataset
reader. Each batch ``t`` the graph asks for is the stream's next ``B`` samples, prepared a few batches ahead by
a thread (shard reads and buffer draws stay off DALI's critical path); the stream's state after batch ``t`` is
kept until the consumer has received it. A failure of the stream (a shard's sha256, the store) stops the loader
with its own one-line error.

Resume. ``state_dict()`` holds ``(epoch, step)``, DALI's checkpoint (the state of every random op as of
the last batch handed out; DALI restarts its external source at the iteration after it) and the stream's
state after that batch (position in the rank's shards, the shuffle buffer's keys); a rebuilt loader asks
the stream for exactly the batch that would have come next.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from dino_pipe.config import DataConfig
from dino_pipe.data.graph import dali_errors, train_graph
from dino_pipe.data.loader import (
    STATE_VERSION,
    ViewBatch,
    _DaliRunner,
    _labels,
    _LoaderBase,
    check_rank,
    check_saved_settings,
    recipe_fingerprint,
    steps_per_epoch,
    train_graph_settings,
)
from dino_pipe.data.recipe import ViewSpec, multicrop_recipe, n_global_views
from dino_pipe.data.streaming import SampleStream, open_streamset
from dino_pipe.errors import UserError
from dino_pipe.storage.cache import CacheSettings, cache_folder, evict
from dino_pipe.storage.stream import check_bound


def stream_folder(settings: CacheSettings, url: str, rank: int) -> Path:
    """Where rank ``rank`` keeps the shards it streams: ``<cache>/stream/<scheme>/<set>/rank-<r>``."""
    return settings.folder / "stream" / cache_folder(settings, url).relative_to(settings.folder) / f"rank-{rank}"


class _Source:
    """The graph's external source: batch ``t`` = the stream's next ``B`` samples, prepared ``ahead`` batches in
    advance by a thread (reading shards and drawing from the buffer stays off DALI's critical path); the stream
    state after each batch is kept until the consumer has it."""

    def __init__(self, stream: SampleStream, labeled: bool, ahead: int, first_iteration: int):
        self.stream, self.labeled = stream, labeled
        self.lock = threading.Lock()
        self.start_state = stream.state()
        self.states: dict[int, dict] = {}
        self.next_iteration = first_iteration
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="stream-batches", daemon=True)
        self._thread.start()

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.stream.batch()
                self._put((batch, self.stream.state()))
        except BaseException as e:  # noqa: BLE001  (raised to the consumer by the loader)
            self.error = e
            self._put(e)

    def __call__(self, info):
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"stream source: {item}")
        batch, state = item
        with self.lock:
            if info.iteration != self.next_iteration:
                raise RuntimeError(f"stream source asked for batch {info.iteration}, expected {self.next_iteration}")
            self.states[info.iteration] = state
            self.next_iteration += 1
        jpgs = [s.jpg for s in batch]
        return (jpgs, [s.label for s in batch]) if self.labeled else (jpgs,)

    def state_after(self, iteration: int) -> dict:
        """The stream's state after batch ``iteration`` (-1: before the first); older states are dropped."""
        with self.lock:
            for t in [t for t in self.states if t < iteration]:
                del self.states[t]
            return self.start_state if iteration < 0 else self.states[iteration]

    def close(self) -> None:
        """Stop the producer thread (the stream itself is closed by its owner)."""
        self._stop.set()
        self._thread.join()


class StreamViewLoader(_LoaderBase):
    """Multi-crop training batches streamed from the shard set at a URL (or folder); see the module docstring.

    ``len(loader)`` = ``floor(floor(N / world) / B)`` batches per epoch on every rank; ``for batch in loader``
    yields the rest of the current epoch. ``stats()``: bytes and GETs fetched, fetch rate, prefetch depth.
    """

    def __init__(self, location: str, cfg: DataConfig, *, device: str = "cpu", device_id: int = 0, rank: int = 0,
                 world_size: int = 1, seed: int | None = None, batch_size: int | None = None,
                 n_local: int | None = None, local_world_size: int | None = None,
                 specs: list[ViewSpec] | None = None, settings: CacheSettings | None = None):
        check_rank(rank, world_size)
        store, shards = open_streamset(location)
        super().__init__(shards, cfg, device, rank, world_size, batch_size, local_world_size)
        self.seed = cfg.seed if seed is None else int(seed)
        self.specs: list[ViewSpec] = list(specs) if specs is not None else multicrop_recipe(cfg, n_local)
        self._steps = steps_per_epoch(self.shards, world_size, self.batch_size)
        settings = settings or CacheSettings.from_config(cfg)
        self.max_bytes = settings.max_bytes // self.local_procs  # the node's bound, shared by its ranks
        check_bound(self.max_bytes, max(self.shards.sizes), f"shard set {self.shards.root} "
                    f"({self.local_procs} process(es) on this node share data.cache_gb)")
        folder = stream_folder(settings, store.url, rank)
        evict(settings, keep=folder.parent, need=settings.max_bytes)  # whole sets cached earlier make room
        self.stream = SampleStream(store, self.shards, folder, seed=self.seed,
                                   rank=rank, world_size=world_size, batch_size=self.batch_size,
                                   buffer=cfg.shuffle_buffer, max_bytes=self.max_bytes, window=cfg.stream_window,
                                   threads=settings.threads)
        self.stream.reads(0)  # a rank left without shards is one line now, not at the first batch
        self._runner = _DaliRunner(self.shards, self.kind, device_id)
        self._source: _Source | None = None
        self.epoch, self._step = 0, 0
        self._pending: bytes | None = None

    # -- facts ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._steps

    @property
    def n_local(self) -> int:
        return len(self.specs) - n_global_views(self.specs)

    @property
    def position(self) -> int:
        """Batches handed out so far (epochs x steps per epoch + step)."""
        return self.epoch * self._steps + self._step

    def stats(self) -> dict:
        """What the stream fetched so far: ``bytes``, ``gets``, ``mb_per_s``, ``depth`` (shards ready ahead)."""
        return self.stream.stats.snapshot()

    def fetch_summary(self) -> dict:
        """GETs and bytes per epoch of this rank, for the run summary."""
        return {"rank": self.rank, "epochs": self.stream.stats.per_epoch(), "bytes": self.stream.stats.bytes_total,
                "gets": self.stream.stats.gets_total, "cache_bound_bytes": self.max_bytes}

    # -- pipeline -------------------------------------------------------------------------------
    def _make(self, checkpoint: bytes | None):
        from nvidia.dali import fn, types

        labeled, source = self.shards.labeled, self._source

        def read():
            outs = fn.external_source(source=source, num_outputs=2 if labeled else 1, batch=True,
                                      batch_info=True, dtype=[types.UINT8] * (2 if labeled else 1),
                                      ndim=[1] * (2 if labeled else 1))
            return (outs[0], outs[1]) if labeled else (outs[0], None)

        return train_graph(self.shards, self.specs, device=self.kind, dtype=self._dtype, source=read,
                           device_id=self._runner.pipeline_id(), checkpoint=checkpoint, **train_graph_settings(self))

    def _ensure_pipe(self) -> None:
        if self._runner.pipe is not None:
            return
        self._close_source()
        replay = 0 if self._pending is not None or self.position == 0 else self.position
        if replay:  # no DALI checkpoint: rebuild from the start and run the batches already handed out
            self.stream.rewind()
        self._source = _Source(self.stream, self.shards.labeled, self.cfg.prefetch + 2,
                               self.position if self._pending is not None else 0)
        self._runner.build(self._make, self._pending)
        self._pending = None
        for _ in range(replay):
            self._run()

    def _run(self):
        """One pipeline iteration; a failure of the stream (a shard's sha256, the store) is its own one line."""
        try:
            return self._runner.run()
        except UserError:
            if self._source is not None and isinstance(self._source.error, UserError):
                raise self._source.error from None
            raise

    def _close_source(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    def _batch(self, outs) -> ViewBatch:
        views = [self._runner.to_torch(outs[i], self._torch_dtype) for i in range(len(self.specs))]
        labels = _labels(outs[len(self.specs)]) if self.shards.labeled else None
        return ViewBatch(views=views, labels=labels)

    def __iter__(self):
        self._ensure_pipe()
        if self._step >= self._steps:
            self.epoch, self._step = self.epoch + 1, 0
        while self._step < self._steps:
            outs = self._run()
            self._step += 1
            yield self._batch(outs)
        self.epoch, self._step = self.epoch + 1, 0

    # -- resume ---------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        return "stream|" + recipe_fingerprint(self)

    def state_dict(self) -> dict:
        """Plain types only: where the consumer is, DALI's checkpoint and the stream's state after the last
        batch handed out (module docstring)."""
        if self._runner.pipe is not None:
            with dali_errors(self.shards):
                checkpoint = bytes(self._runner.pipe.checkpoint())
            stream = self._source.state_after(self.position - 1)
        else:
            checkpoint = self._pending or b""
            stream = self.stream.state()  # no producer runs: the stream is where the next batch starts
        return {"version": STATE_VERSION, "mode": "stream", "epoch": self.epoch, "step": self._step,
                "position": self.position, "rank": self.rank, "world_size": self.world_size, "seed": self.seed,
                "batch_size": self.batch_size, "num_samples": self.shards.num_samples,
                "fingerprint": self._fingerprint(), "dali_checkpoint": checkpoint, "stream": stream}

    def load_state_dict(self, state: dict) -> None:
        """Resume so that the next batch is exactly the one after the saved state's last batch."""
        if state.get("version") != STATE_VERSION or state.get("mode") != "stream":
            raise UserError("cannot resume the data loader: the checkpoint was not written in streaming mode "
                            "(set data.read_mode as it was, or use a new --out)")
        check_saved_settings(self, state, ("world_size", "seed", "batch_size", "num_samples", "rank"))
        self._runner.close()
        self._close_source()
        self.epoch, self._step = int(state["epoch"]), int(state["step"])
        self._pending = bytes(state.get("dali_checkpoint") or b"") or None
        if self._pending is not None:
            self.stream.restore(state["stream"])

    def close(self) -> None:
        self._runner.close()
        self._close_source()
        self.stream.close()

    def describe(self) -> dict:
        """What this loader runs (for logs and benchmark JSON)."""
        return {"device": self.kind, "batch_size": self.batch_size, "threads": self.threads, "read_mode": "stream",
                "views": [s.name for s in self.specs], "steps_per_epoch": self._steps,
                "num_samples": self.num_samples, "prefetch": self.cfg.prefetch,
                "stream_window": self.cfg.stream_window, "cache_bound_bytes": self.max_bytes}

