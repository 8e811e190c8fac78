"""PyTorch-facing iterators over the DALI graphs: :class:`ViewLoader` (training) and :class:`EvalLoader`.

Both run one DALI pipeline per process (rank) and hand out ``torch.Tensor`` batches. On the GPU the
view tensors are DALI's own output buffers handed to torch through DLPack on the current CUDA
stream (DALI's dynamic executor makes the stream wait for the pipeline's work; no copy and no
host wait), as DALI's PyTorch iterator does; on the CPU too (no copy: the dynamic executor's
outputs are not reused, so the tensor may keep the buffer).

Epochs. The reader pads every rank's shard to ``P = ceil(ceil(N / world) / B)`` batches per epoch
(padding repeats a sample at the *end* of the epoch, see :func:`dino_pipe.data.graph.read_shards`),
so the pipeline is an endless stream in which batch ``t`` belongs to epoch ``t // P``. The training
loader yields the first ``len(loader) = floor(floor(N / world) / B)`` batches of each epoch (whole
batches of real samples; the same count on every rank) and runs the rest of the epoch's batches
unseen; the eval loader yields every real sample once and cuts the padding off by position.

Resume. ``state_dict()`` holds ``(epoch, step)`` and DALI's own checkpoint
(``enable_checkpointing=True``: reader position, shuffle buffer and the state of every random op).
DALI records the checkpoint for the last iteration the *consumer* received, not the prefetched
ones, so a pipeline rebuilt from it produces exactly the batch after the last one handed out
(verified by ``tests/test_data_loader.py``). A state saved by another rank (or without a
checkpoint) resumes by replay: rebuild with the same seed and run ``position`` batches unseen.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from dino_pipe.config import DataConfig
from dino_pipe.cpus import available_cores
from dino_pipe.data.graph import FLAG_NAMES, dali_dtype, dali_errors, eval_graph, op_seed, train_graph
from dino_pipe.data.recipe import ViewSpec, multicrop_recipe, n_global_views
from dino_pipe.data.shardset import ShardSet, open_shardset
from dino_pipe.device import Device, check_device, torch_device
from dino_pipe.errors import UserError

STATE_VERSION = 1


@dataclass
class ViewBatch:
    """``views``: the recipe's globals ``[B, 3, G, G]`` then ``n_local`` locals ``[B, 3, L, L]``; ``labels [B]``
    (int64) or None for an unlabelled set. ``debug=True`` loaders add ``indices [B]`` (global sample
    index in shard-set order) and ``flags``: one ``[B, len(FLAG_NAMES)]`` float tensor per view."""

    views: list[torch.Tensor]
    labels: torch.Tensor | None
    indices: torch.Tensor | None = None
    flags: list[torch.Tensor] | None = None


def _device_kind(device: str) -> Device:
    """``device`` checked: ``"cpu"``, or ``"cuda"`` where CUDA is available."""
    if check_device(device) == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but CUDA is not available here (use --device cpu)")
    return device  # type: ignore[return-value]


#: automatic DALI CPU threads per GPU pipeline at most: the GPU graph's CPU work is reading, shape
#: peeking, random draws and the host share of nvJPEG; each thread also holds its own pinned pool
GPU_MAX_THREADS = 8


def default_threads(cfg: DataConfig, local_world_size: int, kind: Device = "cpu") -> int:
    """``cfg.threads`` or, when 0, the cores this process may use divided by the processes on this
    node (at most :data:`GPU_MAX_THREADS` for the GPU graph)."""
    if cfg.threads > 0:
        return cfg.threads
    n = max(1, available_cores() // max(1, local_world_size))
    return min(n, GPU_MAX_THREADS) if kind == "cuda" else n


def _local_procs(world_size: int, kind: Device, local_world_size: int | None) -> int:
    if local_world_size is not None:
        return local_world_size
    if kind == "cuda":
        return max(1, min(world_size, torch.cuda.device_count()))
    return world_size


class _DaliRunner:
    """Builds one DALI pipeline, runs it with one-line errors and copies outputs into torch tensors."""

    def __init__(self, shards: ShardSet, kind: Device, device_id: int):
        self.shards = shards
        self.kind = kind
        self.device_id = device_id
        self.pipe = None
        self.torch_device = torch_device(kind, device_id)

    def pipeline_id(self, kind: Device | None = None) -> int | None:
        """``device_id`` for the pipeline: this runner's GPU, or None for the CPU graph."""
        return self.device_id if (kind or self.kind) == "cuda" else None

    def build(self, make, checkpoint: bytes | None = None) -> None:
        self.close()
        with dali_errors(self.shards):
            pipe = make(checkpoint)
            pipe.build()
        self.pipe = pipe

    def run(self):
        """One iteration's outputs. On the GPU they are bound to torch's current stream (DALI makes that
        stream wait for its work) instead of ``run()``'s default, which waits on the host for every batch."""
        with dali_errors(self.shards):
            if self.kind == "cuda":
                return self.pipe.run(torch.cuda.current_stream(self.torch_device))
            return self.pipe.run()

    def close(self) -> None:
        if self.pipe is not None:
            del self.pipe
            self.pipe = None

    def to_torch(self, tl, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A dense DALI batch (TensorList) as a torch tensor on this runner's device.

        Zero-copy through DLPack on both devices, as ``DALIGenericIterator`` does with the dynamic
        executor: its outputs own their memory, which the tensor keeps alive (on the GPU torch's current
        stream waits on DALI's). The CPU copy this replaced (``feed_ndarray`` into a new tensor) cost
        one pass over every view of every batch.
        """
        tensor = tl.as_tensor()
        if self.kind == "cuda":
            with torch.cuda.device(self.torch_device):
                out = torch.from_dlpack(tensor)
        else:
            out = torch.from_dlpack(tensor)
        return out if dtype is None or dtype == out.dtype else out.to(dtype)


def _strings(tl) -> list[str]:
    return [bytes(np.asarray(tl[i])).decode("utf-8", "replace") for i in range(len(tl))]


def _labels(tl) -> torch.Tensor:
    return torch.tensor([int(s) for s in _strings(tl)], dtype=torch.int64)


def _indices(tl, index: dict[tuple[str, str], int]) -> torch.Tensor:
    """Global sample indices from DALI ``source_info`` strings ``"<tar path>:<offset>:<member>"``."""
    out = []
    for s in _strings(tl):
        path, _, member = s.rsplit(":", 2)
        out.append(index[(os.path.basename(path), member)])
    return torch.tensor(out, dtype=torch.int64)


class _LoaderBase:
    """What every loader shares, given its opened set (a :class:`ShardSet`, or a stream's manifest facts): the
    device (``kind``: ``"cpu"`` or ``"cuda"``), the rank, the processes on this node, threads and output dtype."""

    def __init__(self, shards, cfg: DataConfig, device: str, rank: int, world_size: int,
                 batch_size: int | None, local_world_size: int | None):
        self.shards = shards
        self.cfg = cfg
        self.kind = _device_kind(device)
        self.rank, self.world_size = rank, world_size
        self.batch_size = int(batch_size or cfg.batch_size)
        self.local_procs = _local_procs(world_size, self.kind, local_world_size)
        self.threads = default_threads(cfg, self.local_procs, self.kind)
        self._dtype = dali_dtype(cfg.output_dtype, self.kind)
        self._torch_dtype = torch.bfloat16 if cfg.output_dtype == "bfloat16" else None

    @property
    def num_samples(self) -> int:
        return self.shards.num_samples

    @property
    def num_classes(self) -> int:
        return self.shards.num_classes


def check_rank(rank: int, world_size: int) -> None:
    """A rank outside ``[0, world_size)`` is one line."""
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world size {world_size}")


class _ShardSetLoader(_LoaderBase):
    """A loader over a shard set on local disk, read by DALI's webdataset reader."""

    def __init__(self, shardset, cfg: DataConfig, device: str, rank: int, world_size: int,
                 batch_size: int | None, local_world_size: int | None):
        check_rank(rank, world_size)
        shards = shardset if isinstance(shardset, ShardSet) else open_shardset(shardset, part=(rank, world_size))
        super().__init__(shards, cfg, device, rank, world_size, batch_size, local_world_size)

    def definition(self, kind: Device = "cuda") -> bytes:
        """This loader's DALI graph defined for ``kind`` (``"cuda"``: mixed nvJPEG decode, GPU ops) and
        serialized, without building it or touching CUDA: DALI checks every operator and argument
        against its schema and refuses illegal device transitions, so this runs on any machine."""
        dtype = dali_dtype(self.cfg.output_dtype, kind) if kind != self.kind else self._dtype
        with dali_errors(self.shards):
            return self._make(None, kind=kind, define_only=True, dtype=dtype).serialize()


def steps_per_epoch(shards, world_size: int, batch_size: int) -> int:
    """Training batches per epoch on every rank, ``floor(floor(N / world) / B)``: the whole batches of each
    rank's equal share, the same in both read modes; none is one line."""
    n = shards.num_samples
    steps = (n // world_size) // batch_size
    if steps == 0:
        raise UserError(f"shard set {shards.root}: {n} samples do not fill one batch of {batch_size} "
                        f"on each of {world_size} rank(s); lower data.batch_size")
    return steps


def train_graph_settings(loader) -> dict:
    """The :func:`train_graph` arguments a training loader takes from its set, recipe, rank and config (the
    device, dtype, source and checkpoint are each loader's own)."""
    cfg = loader.cfg
    return dict(shard_id=loader.rank, num_shards=loader.world_size, run_seed=loader.seed,
                shuffle_buffer=cfg.shuffle_buffer, hw_decoder_load=cfg.hw_decoder_load, mean=cfg.mean, std=cfg.std,
                contrast_center=cfg.contrast_center, batch_size=loader.batch_size, num_threads=loader.threads,
                seed=op_seed(loader.seed, "pipeline", loader.rank), prefetch_queue_depth=cfg.prefetch,
                enable_checkpointing=True, exec_dynamic=True)


def recipe_fingerprint(loader) -> str:
    """What a training loader's saved state must match besides its named settings: the set's size, batch,
    ranks, seed, view recipe and the graph settings that change the samples."""
    spec = ";".join(repr(s) for s in loader.specs)
    return (f"{loader.shards.num_samples}|{loader.batch_size}|{loader.world_size}|{loader.seed}|{spec}|"
            f"{loader.cfg.shuffle_buffer}|{loader.cfg.contrast_center}|{loader.cfg.interp}")


def check_saved_settings(loader, state: dict, keys: tuple[str, ...]) -> None:
    """A saved loader state whose ``keys`` or fingerprint differ from ``loader``'s is one line."""
    for key in keys:
        if state.get(key) != getattr(loader, key):
            raise UserError(f"cannot resume the data loader: saved {key}={state.get(key)}, "
                            f"now {getattr(loader, key)} (restart the run or restore the old setting)")
    if state.get("fingerprint") != loader._fingerprint():
        raise UserError("cannot resume the data loader: the view recipe or shuffle buffer changed since the "
                        "state was saved (restore data.* settings)")


class ViewLoader(_ShardSetLoader):
    """Multi-crop training batches from a shard set through the DALI graph.

    ``for batch in loader`` yields the rest of the current epoch (``len(loader)`` batches per
    epoch per rank, partial batches dropped, same count on every rank); iterating again runs the
    next epoch. ``loader.epoch`` is the epoch the next batch belongs to. Same seed -> identical
    batches; ranks read disjoint shards of the set and draw different augmentations. ``specs``
    replaces the multi-crop recipe (e.g. the linear probe's single view).
    """

    def __init__(self, shardset, cfg: DataConfig, *, device: str = "cpu", device_id: int = 0, rank: int = 0,
                 world_size: int = 1, seed: int | None = None, batch_size: int | None = None,
                 n_local: int | None = None, debug: bool = False, local_world_size: int | None = None,
                 specs: list[ViewSpec] | None = None):
        super().__init__(shardset, cfg, device, rank, world_size, batch_size, local_world_size)
        self.seed = cfg.seed if seed is None else int(seed)
        self.specs: list[ViewSpec] = list(specs) if specs is not None else multicrop_recipe(cfg, n_local)
        self.debug = debug
        self._steps = steps_per_epoch(self.shards, world_size, self.batch_size)
        self._batches_per_epoch = math.ceil(math.ceil(self.shards.num_samples / world_size) / self.batch_size)
        self._runner = _DaliRunner(self.shards, self.kind, device_id)
        self._sample_index = self.shards.sample_index() if debug else None
        self.epoch = 0
        self._step = 0  # batches of the current epoch already handed out
        self._pending: tuple[bytes | None, int] | None = None  # (checkpoint, replay batches) to apply at build

    # -- facts ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._steps

    @property
    def n_local(self) -> int:
        return len(self.specs) - n_global_views(self.specs)

    @property
    def position(self) -> int:
        """Pipeline iterations consumed so far (epochs x padded batches per epoch + step)."""
        return self.epoch * self._batches_per_epoch + self._step

    # -- pipeline -------------------------------------------------------------------------------
    def _make(self, checkpoint: bytes | None, *, kind: Device | None = None, define_only: bool = False, dtype=None):
        kind = kind or self.kind
        return train_graph(self.shards, self.specs, device=kind, dtype=dtype or self._dtype, debug=self.debug,
                           device_id=None if define_only else self._runner.pipeline_id(kind), checkpoint=checkpoint,
                           **train_graph_settings(self))

    def _ensure_pipe(self) -> None:
        if self._runner.pipe is not None:
            return
        checkpoint, replay = self._pending or (None, 0)
        self._pending = None
        self._runner.build(self._make, checkpoint)
        for _ in range(replay):
            self._runner.run()

    def _finish_epoch(self) -> None:
        """Run the epoch's remaining (dropped/padded) batches so the next epoch starts aligned."""
        for _ in range(self._batches_per_epoch - self._step):
            self._runner.run()
        self.epoch += 1
        self._step = 0

    def _batch(self, outs) -> ViewBatch:
        r = self._runner
        nv = len(self.specs)
        views = [r.to_torch(outs[i], self._torch_dtype) for i in range(nv)]
        k = nv
        labels = None
        if self.shards.labeled:
            labels = _labels(outs[k])
            k += 1
        if not self.debug:
            return ViewBatch(views=views, labels=labels)
        indices = _indices(outs[k], self._sample_index)
        flags = [torch.from_numpy(np.array(outs[k + 1 + i].as_tensor())) for i in range(nv)]
        return ViewBatch(views=views, labels=labels, indices=indices, flags=flags)

    def __iter__(self):
        self._ensure_pipe()
        if self._step >= self._steps:
            self._finish_epoch()
        while self._step < self._steps:
            outs = self._runner.run()
            self._step += 1
            yield self._batch(outs)
        self._finish_epoch()

    # -- resume ---------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        return recipe_fingerprint(self)

    def state_dict(self) -> dict:
        """Plain types only (loads with ``torch.load(weights_only=True)``): where the consumer is
        and DALI's checkpoint of the pipeline as of the last batch handed out."""
        checkpoint = b""
        if self._runner.pipe is not None:
            with dali_errors(self.shards):
                checkpoint = bytes(self._runner.pipe.checkpoint())
        elif self._pending is not None and self._pending[0] is not None:
            checkpoint = self._pending[0]
        return {"version": STATE_VERSION, "epoch": self.epoch, "step": self._step, "position": self.position,
                "rank": self.rank, "world_size": self.world_size, "seed": self.seed,
                "batch_size": self.batch_size, "num_samples": self.shards.num_samples,
                "fingerprint": self._fingerprint(), "dali_checkpoint": checkpoint}

    def load_state_dict(self, state: dict) -> None:
        """Resume so that the next batch is exactly the one after the saved state's last batch."""
        if state.get("version") != STATE_VERSION:
            raise UserError(f"loader state version {state.get('version')} is not {STATE_VERSION}; cannot resume")
        check_saved_settings(self, state, ("world_size", "seed", "batch_size", "num_samples"))
        self._runner.close()
        self.epoch, self._step = int(state["epoch"]), int(state["step"])
        checkpoint = state.get("dali_checkpoint") or None
        if checkpoint is not None and state.get("rank") == self.rank:
            self._pending = (bytes(checkpoint), 0)
        else:
            if checkpoint is not None:
                warnings.warn(f"loader state was saved by rank {state.get('rank')}; rank {self.rank} resumes by "
                              f"replaying {state['position']} batches", stacklevel=2)
            self._pending = (None, int(state["position"]))

    def close(self) -> None:
        self._runner.close()

    def describe(self) -> dict:
        """What this loader runs (for logs and benchmark JSON)."""
        return {"device": self.kind, "batch_size": self.batch_size, "threads": self.threads,
                "views": [s.name for s in self.specs], "global_size": self.cfg.global_size,
                "local_size": self.cfg.local_size, "steps_per_epoch": self._steps,
                "num_samples": self.num_samples, "prefetch": self.cfg.prefetch, "flags": list(FLAG_NAMES)}


class EvalLoader(_ShardSetLoader):
    """Evaluation batches ``(images [B, 3, C, C], labels [B] (-1 when unlabelled), indices [B])``.

    Shorter side resized to ``cfg.eval_resize`` (bicubic), centre crop ``cfg.eval_crop``,
    normalized; shard-set order, no shuffling. Rank ``r`` of ``w`` reads samples
    ``[floor(N r / w), floor(N (r + 1) / w))``; every sample comes out exactly once across ranks
    (DALI's padding is cut off by position). ``len()`` = ``ceil(n_rank / B)`` (the last batch may be
    partial; ranks can differ by one batch). Iterating again yields the same batches.
    """

    def __init__(self, shardset, cfg: DataConfig, *, device: str = "cpu", device_id: int = 0, rank: int = 0,
                 world_size: int = 1, batch_size: int | None = None, local_world_size: int | None = None):
        super().__init__(shardset, cfg, device, rank, world_size, batch_size, local_world_size)
        n = self.shards.num_samples
        start, end = (n * rank) // world_size, (n * (rank + 1)) // world_size
        self.rank_samples = end - start
        self._batches_per_epoch = math.ceil(math.ceil(n / world_size) / self.batch_size)
        self._runner = _DaliRunner(self.shards, self.kind, device_id)
        self._sample_index = self.shards.sample_index()

    def __len__(self) -> int:
        return math.ceil(self.rank_samples / self.batch_size)

    def _make(self, checkpoint: bytes | None, *, kind: Device | None = None, define_only: bool = False, dtype=None):
        cfg = self.cfg
        kind = kind or self.kind
        return eval_graph(
            self.shards, device=kind, shard_id=self.rank, num_shards=self.world_size,
            resize=cfg.eval_resize, crop=cfg.eval_crop, hw_decoder_load=cfg.hw_decoder_load,
            mean=cfg.mean, std=cfg.std, dtype=dtype or self._dtype, batch_size=self.batch_size,
            num_threads=self.threads, device_id=None if define_only else self._runner.pipeline_id(kind),
            seed=0, prefetch_queue_depth=cfg.prefetch, exec_dynamic=True)

    def __iter__(self):
        if self._runner.pipe is None:
            self._runner.build(self._make)
        seen = 0
        for _ in range(self._batches_per_epoch):
            outs = self._runner.run()
            keep = min(self.batch_size, self.rank_samples - seen)
            seen += max(keep, 0)
            if keep <= 0:
                continue
            images = self._runner.to_torch(outs[0], self._torch_dtype)[:keep]
            indices = _indices(outs[1], self._sample_index)[:keep]
            labels = _labels(outs[2])[:keep] if self.shards.labeled else torch.full((keep,), -1, dtype=torch.int64)
            yield images, labels, indices

    def close(self) -> None:
        self._runner.close()
