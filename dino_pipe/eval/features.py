"""Frozen features of a whole shard set, extracted in parallel, kept in sample order, saved to disk.

Each process runs the backbone over its part of the shard set (the eval loader gives every
sample to exactly one rank, with its global index). The features stay where they were made
(:class:`LocalFeatures`: rows + labels + global indices); :func:`check_exactly_once` proves the
ranks together saw every index once; :func:`gather_ordered` assembles the ``[N, D]`` matrix in
shard-set order on every rank or on one, one rank's block at a time (peak: the result plus one
block). Feature files are safetensors: ``features`` ``[N, D]`` (float16 by default) and
``labels`` ``[N]`` int64, with string metadata (checkpoint, shard set, protocol).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from dino_pipe.errors import UserError
from dino_pipe.eval.workers import WorkerContext

FEATURES_FORMAT = "dino-pipe-features"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class LocalFeatures:
    """This rank's rows: ``features`` ``[n, D]``, ``labels`` ``[n]`` int64, ``indices`` ``[n]`` int64."""

    features: Tensor
    labels: Tensor
    indices: Tensor

    def __len__(self) -> int:
        return int(self.features.shape[0])


def cls_features(model: torch.nn.Module, images: Tensor) -> Tensor:
    """The backbone's embedding (final-norm CLS token for ViTs, pooled features for CNNs), L2-normalized."""
    return F.normalize(model(images).float(), dim=1)


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype ``model`` computes in (its first floating parameter's; float32 if none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    ctx: WorkerContext,
    *,
    num_samples: int,
    feature_fn: Callable[[torch.nn.Module, Tensor], Tensor] = cls_features,
    dtype: torch.dtype = torch.float16,
    progress: Callable[[int], None] | None = None,
) -> LocalFeatures:
    """Run ``feature_fn(model, images)`` over ``(images, labels, indices)`` batches.

    Rows are stored in ``dtype`` on ``ctx.device`` in a buffer sized for this rank's share
    (``ceil(num_samples / world_size)`` rows, grown if a rank gets more), so extraction never
    holds two copies of the features. Images are cast to the model's dtype at the boundary: a
    loader with ``data.output_dtype=bfloat16|float16`` feeds an fp32 model.
    """
    capacity = math.ceil(num_samples / ctx.world_size) + 1
    feats: Tensor | None = None
    labels = torch.empty(capacity, dtype=torch.long)
    indices = torch.empty(capacity, dtype=torch.long)
    n = 0
    model_dtype = input_dtype(model)
    for images, y, idx in batches:
        out = feature_fn(model, images.to(ctx.device, model_dtype, non_blocking=True)).to(dtype)
        b = out.shape[0]
        if feats is None:
            feats = torch.empty(capacity, out.shape[1], dtype=dtype, device=ctx.device)
        if n + b > feats.shape[0]:
            grow = max(n + b, int(feats.shape[0] * 1.25))
            feats = torch.cat([feats[:n], feats.new_empty(grow - n, feats.shape[1])])
            labels = torch.cat([labels[:n], labels.new_empty(grow - n)])
            indices = torch.cat([indices[:n], indices.new_empty(grow - n)])
        feats[n : n + b] = out
        labels[n : n + b] = y.reshape(-1).to("cpu", torch.long)
        indices[n : n + b] = idx.reshape(-1).to("cpu", torch.long)
        n += b
        if progress is not None:
            progress(b)
    if feats is None:
        raise UserError("the shard set gave no images to extract features from")
    return LocalFeatures(feats[:n], labels[:n].clone(), indices[:n].clone())


def check_exactly_once(indices: Tensor, num_samples: int, ctx: WorkerContext) -> None:
    """All ranks' ``indices`` together must be ``0..num_samples-1``, each exactly once."""
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_samples):
        raise RuntimeError(f"feature extraction: sample index out of range [0, {num_samples})")
    counts = torch.bincount(indices.cpu(), minlength=num_samples).to(torch.int32)
    if ctx.distributed:
        counts = counts.to(ctx.device)
        dist.all_reduce(counts)
        counts = counts.cpu()
    bad = (counts != 1).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise RuntimeError(
            f"feature extraction: {bad.numel()} of {num_samples} samples were not seen exactly once "
            f"(e.g. sample {i} seen {int(counts[i])} times)"
        )


def gather_ordered(
    local: LocalFeatures, num_samples: int, ctx: WorkerContext, *, dst: int | None = None
) -> tuple[Tensor, Tensor] | None:
    """``[N, D]`` features and ``[N]`` labels in sample order, on every rank (``dst=None``) or on ``dst``.

    Other ranks get None when ``dst`` is set. Call :func:`check_exactly_once` first.
    """
    keep = dst is None or ctx.rank == dst
    dim = local.features.shape[1]
    if not ctx.distributed:
        feats = local.features.new_empty(num_samples, dim)
        labels = torch.empty(num_samples, dtype=torch.long)
        feats[local.indices.to(feats.device)] = local.features
        labels[local.indices] = local.labels
        return feats, labels
    sizes = torch.zeros(ctx.world_size, dtype=torch.long, device=ctx.device)
    sizes[ctx.rank] = len(local)
    dist.all_reduce(sizes)
    feats = local.features.new_empty(num_samples, dim) if keep else None
    labels = torch.empty(num_samples, dtype=torch.long, device=ctx.device) if keep else None
    for src in range(ctx.world_size):
        n = int(sizes[src])
        if src == ctx.rank:
            block = local.features.contiguous()
            meta = torch.stack([local.indices, local.labels]).to(ctx.device)
        else:
            block = local.features.new_empty(n, dim)
            meta = torch.empty(2, n, dtype=torch.long, device=ctx.device)
        dist.broadcast(block, src=src)
        dist.broadcast(meta, src=src)
        if keep:
            feats[meta[0]] = block
            labels[meta[0]] = meta[1]
        del block, meta
    return (feats, labels.cpu()) if keep else None


def feature_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"config key eval.feature_dtype: must be one of {', '.join(DTYPES)}, got '{name}'")
    return DTYPES[name]


def save_features(path: str | Path, features: Tensor, labels: Tensor, metadata: dict[str, Any]) -> Path:
    """Write ``features`` ``[N, D]`` + ``labels`` ``[N]`` and metadata (JSON-encoded values) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FEATURES_FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {"features": features.contiguous().cpu(), "labels": labels.to(torch.long).contiguous().cpu()},
        str(tmp),
        metadata=meta,
    )
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


@dataclass
class FeatureFile:
    """A loaded feature file (possibly a row range of it) and its metadata."""

    features: Tensor
    labels: Tensor
    metadata: dict[str, Any]
    num_rows: int  # rows in the whole file


def read_feature_metadata(path: str | Path) -> tuple[dict[str, Any], int, int]:
    """(metadata, number of rows, feature dim) of a feature file without loading it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: feature file not found (write it with --save-features)")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            shape = f.get_slice("features").get_shape()
    except Exception as e:
        raise UserError(f"{path}: not a readable safetensors feature file ({str(e)[:120]})") from None
    if raw.get("format") != FEATURES_FORMAT:
        raise UserError(f"{path}: not a dino-pipe feature file (metadata format != {FEATURES_FORMAT})")
    meta = {k: json.loads(v) for k, v in raw.items() if k != "format"}
    return meta, int(shape[0]), int(shape[1])


def load_features(path: str | Path, rows: tuple[int, int] | None = None) -> FeatureFile:
    """Load a feature file, or only rows ``[start, stop)`` of it (a rank's slice of a train bank)."""
    from safetensors import safe_open

    meta, n, _ = read_feature_metadata(path)
    start, stop = rows if rows is not None else (0, n)
    with safe_open(str(path), framework="pt") as f:
        feats = f.get_slice("features")[start:stop]
        labels = f.get_slice("labels")[start:stop]
    return FeatureFile(features=feats, labels=labels.to(torch.long), metadata=meta, num_rows=n)


def rank_rows(num_rows: int, ctx: WorkerContext) -> tuple[int, int]:
    """The contiguous row range ``[start, stop)`` of ``num_rows`` that rank ``ctx.rank`` holds."""
    per = math.ceil(num_rows / ctx.world_size)
    start = min(num_rows, ctx.rank * per)
    return start, min(num_rows, start + per)
