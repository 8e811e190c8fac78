"""``dino-pipe eval knn``: the DINO k-NN protocol end to end, on one or many processes.

1. Features: the teacher (or student, or a random init of the same architecture) backbone's
   L2-normalized embedding of every image of the train and val shard sets through the
   evaluation pipeline (resize shorter side to ``data.eval_resize``, center crop
   ``data.eval_crop``), stored in ``eval.feature_dtype`` (float16: same answer as float32).
   Each rank extracts its share; indices place every row.
2. Classification: :func:`dino_pipe.eval.knn.knn_classify` with the train bank left sharded
   across ranks (top-k per rank, merged), the val features gathered on every rank, for every
   k in ``eval.knn_k`` (clipped to the train-set size) and ``T = eval.knn_temperature``.

``save_features=DIR`` writes ``DIR/train.safetensors`` and ``DIR/val.safetensors``;
``load_features=DIR`` reads them instead of running the network, so another k or T costs seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dino_pipe.config import Config, config_from_dict
from dino_pipe.errors import UserError
from dino_pipe.eval.features import (
    check_exactly_once,
    cls_features,
    extract_features,
    feature_dtype,
    gather_ordered,
    load_features,
    rank_rows,
    read_feature_metadata,
    save_features,
)
from dino_pipe.eval.inputs import checkpoint_facts, labelled_shardset, resolve_config
from dino_pipe.eval.knn import knn_classify
from dino_pipe.eval.workers import WorkerContext, run_workers
from dino_pipe.progress import make_progress

SPLITS = ("train", "val")


def feature_file(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"{split}.safetensors"


@dataclass
class KnnJob:
    """Everything a k-NN worker needs (picklable)."""

    config: dict
    checkpoint: str | None
    which: str
    random_init: bool
    train: str | None
    val: str | None
    ks: tuple[int, ...]
    temperature: float
    save_features: str | None = None
    load_features: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    shardsets: dict[str, dict] = field(default_factory=dict)


def _extract_split(job: KnnJob, cfg: Config, model, split: str, ctx: WorkerContext):
    from dino_pipe.data.loader import EvalLoader

    path = job.train if split == "train" else job.val
    loader = EvalLoader(path, cfg.data, device=ctx.device.type, device_id=ctx.device.index or 0, rank=ctx.rank,
                        world_size=ctx.world_size, batch_size=cfg.eval.batch_size)
    n = loader.num_samples
    with make_progress("img", disable=not ctx.is_main) as bar:
        task = bar.add_task(f"{split} features (rank 0 of {ctx.world_size})", total=loader.rank_samples)
        local = extract_features(model, loader, ctx, num_samples=n, feature_fn=cls_features,
                                 dtype=feature_dtype(cfg.eval.feature_dtype),
                                 progress=lambda b: bar.advance(task, b))
    check_exactly_once(local.indices, n, ctx)
    if (local.labels < 0).any():
        raise UserError(f"shard set {path}: has unlabeled samples; k-NN needs class labels")
    return local, n


@dataclass
class _Features:
    """What the classification needs on one rank: its share of the train bank, every val query, the set sizes."""

    bank: Any
    bank_labels: Any
    queries: Any
    query_labels: Any
    n_train: int
    n_val: int


def _knn_worker(ctx: WorkerContext, job: KnnJob) -> dict | None:
    """One rank: features (loaded or extracted), then k-NN over the sharded bank; the result on rank 0."""
    cfg = config_from_dict(job.config)
    t0 = time.perf_counter()
    feats = _loaded_features(job, ctx) if job.load_features else _extracted_features(job, cfg, ctx)
    t_features = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = _classify(job, cfg, ctx, feats)
    t_knn = time.perf_counter() - t1
    if not ctx.is_main:
        return None
    return _knn_result(job, cfg, ctx, feats, scores, {"features": round(t_features, 3), "knn": round(t_knn, 3)})


def _loaded_features(job: KnnJob, ctx: WorkerContext) -> _Features:
    """Features saved by ``--save-features``: this rank's rows of the train bank, all val rows."""
    n_train = read_feature_metadata(feature_file(job.load_features, "train"))[1]
    train = load_features(feature_file(job.load_features, "train"), rows=rank_rows(n_train, ctx))
    val = load_features(feature_file(job.load_features, "val"))
    return _Features(train.features.to(ctx.device), train.labels.to(ctx.device), val.features.to(ctx.device),
                     val.labels, n_train, val.num_rows)


def _extracted_features(job: KnnJob, cfg: Config, ctx: WorkerContext) -> _Features:
    """Features from the network: each rank extracts its share of both sets (saved when asked); the val
    features are then gathered on every rank, the train bank stays sharded."""
    from dino_pipe.eval.trained_backbone import load_backbone

    model = load_backbone(job.checkpoint, job.which, random_init=job.random_init, seed=cfg.train.seed,
                          random_model=cfg.model).model
    model.to(ctx.device)
    local_train, n_train = _extract_split(job, cfg, model, "train", ctx)
    local_val, n_val = _extract_split(job, cfg, model, "val", ctx)
    del model
    if job.save_features:
        _save_split_features(job, cfg, ctx, (("train", local_train, n_train), ("val", local_val, n_val)))
    queries, query_labels = gather_ordered(local_val, n_val, ctx)
    return _Features(local_train.features, local_train.labels.to(ctx.device), queries, query_labels, n_train, n_val)


def _save_split_features(job: KnnJob, cfg: Config, ctx: WorkerContext, splits: tuple) -> None:
    """``--save-features``: each split's features gathered in set order on rank 0 and written with their metadata."""
    meta = {
        "checkpoint": job.source,
        "shardsets": job.shardsets,
        "eval_resize": cfg.data.eval_resize,
        "eval_crop": cfg.data.eval_crop,
        "normalized": True,
        "num_classes": job.shardsets["train"]["num_classes"],
        "classes": job.shardsets["train"].get("classes", []),
    }
    for split, local, n in splits:
        ordered = gather_ordered(local, n, ctx, dst=0)
        if ctx.is_main:
            save_features(
                feature_file(job.save_features, split), ordered[0], ordered[1], {**meta, "split": split}
            )
        del ordered


def _classify(job: KnnJob, cfg: Config, ctx: WorkerContext, feats: _Features):
    """Weighted k-NN of every query against the sharded bank, for every k (clipped to the bank size)."""
    num_classes = int(job.shardsets["train"]["num_classes"])
    ks = sorted({min(k, feats.n_train) for k in job.ks})
    with make_progress("query", disable=not ctx.is_main) as bar:
        task = bar.add_task("k-NN", total=feats.n_val)
        return knn_classify(feats.queries, feats.query_labels, feats.bank, feats.bank_labels, num_classes=num_classes,
                            ks=ks, temperature=job.temperature, query_chunk=cfg.eval.knn_chunk_size,
                            bank_chunk=cfg.eval.knn_bank_chunk_size, progress=lambda b: bar.advance(task, b))


def _knn_result(job: KnnJob, cfg: Config, ctx: WorkerContext, feats: _Features, scores, seconds: dict) -> dict:
    """The result dict: protocol, sources, accuracies (overall and per class) per k, timings."""
    n_train, num_classes = feats.n_train, int(job.shardsets["train"]["num_classes"])
    acc, per_class = scores.accuracy(), scores.class_accuracy()
    return {
        "protocol": "knn",
        "checkpoint": job.source,
        "data": {
            **job.shardsets,
            "eval_resize": cfg.data.eval_resize,
            "eval_crop": cfg.data.eval_crop,
            "mean": list(cfg.data.mean),
            "std": list(cfg.data.std),
        },
        "knn": {
            "temperature": job.temperature,
            "ks": list(job.ks),
            "weights": "exp(similarity / T)",
            "feature_dtype": cfg.eval.feature_dtype
            if not job.load_features
            else str(feats.queries.dtype).replace("torch.", ""),
            "feature_dim": int(feats.queries.shape[1]),
            "normalized": True,
        },
        "results": [
            {"k": k, "k_effective": min(k, n_train), **acc[min(k, n_train)], **k_note(k, n_train, num_classes),
             "class_top1": per_class[min(k, n_train)]}
            for k in job.ks
        ],
        "features": {"saved": job.save_features, "loaded": job.load_features},
        "world_size": ctx.world_size,
        "device": ctx.device.type,
        "seconds": seconds,
    }


def k_note(k: int, n_train: int, num_classes: int) -> dict:
    """``{"note": ...}`` when ``k`` is too large for the bank to mean what it says, else ``{}``.

    Beyond the bank, k is capped to its size; beyond the bank's average class size, most of the k
    neighbours must come from other classes, so the vote measures the class sizes more than the features.
    """
    if k > n_train:
        return {"note": f"k capped to the bank size {n_train}"}
    per_class = n_train / max(num_classes, 1)
    if num_classes > 1 and k > per_class:
        return {
            "note": f"k exceeds the bank's average class size ({per_class:.0f}): most neighbours are from other classes"
        }
    return {}


def evaluate_knn(
    checkpoint: str | Path | None = None,
    train: str | Path | None = None,
    val: str | Path | None = None,
    *,
    which: str = "teacher",
    random_init: bool = False,
    ks: tuple[int, ...] | None = None,
    temperature: float | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    save_features: str | Path | None = None,
    load_features: str | Path | None = None,
    gpus: int = 0,
    procs: int = 1,
) -> dict:
    """Run the k-NN protocol; returns the result dict (accuracies per k, protocol, sources)."""
    if load_features:
        metas = {}
        for split in SPLITS:
            meta, rows, dim = read_feature_metadata(feature_file(load_features, split))
            metas[split] = (meta, rows, dim)
        (mt, _, dt), (mv, _, dv) = metas["train"], metas["val"]
        if dt != dv:
            raise UserError(f"{load_features}: train features are {dt}-d but val features are {dv}-d")
        if mt.get("classes") != mv.get("classes"):
            raise UserError(f"{load_features}: train and val feature files name different classes")
        cfg = resolve_config(None, overrides)
        source = mt.get("checkpoint", {})
        shardsets = {s: {**metas[s][0].get("shardsets", {}).get(s, {}), "num_samples": metas[s][1]} for s in SPLITS}
        shardsets["train"]["num_classes"] = int(mt.get("num_classes", 0))
        if shardsets["train"]["num_classes"] < 1:
            raise UserError(f"{feature_file(load_features, 'train')}: metadata lacks num_classes")
    else:
        if checkpoint is None or train is None or val is None:
            raise UserError("eval knn needs --checkpoint, --train and --val (or --load-features DIR)")
        base, source = checkpoint_facts(checkpoint, which, random_init)
        cfg = resolve_config(base, overrides)
        shardsets = {"train": labelled_shardset(train), "val": labelled_shardset(val)}
        if shardsets["train"]["classes"] != shardsets["val"]["classes"]:
            raise UserError(f"shard sets {train} and {val} name different classes; k-NN needs the same label set")
    job = KnnJob(config=cfg.to_dict(), checkpoint=source.get("checkpoint") if checkpoint else None, which=which,
                 random_init=random_init, train=str(train) if train else None, val=str(val) if val else None,
                 ks=tuple(ks or cfg.eval.knn_k), temperature=float(temperature or cfg.eval.knn_temperature),
                 save_features=str(save_features) if save_features else None,
                 load_features=str(load_features) if load_features else None, source=source, shardsets=shardsets)
    world = gpus if gpus > 0 else procs
    for split in SPLITS:
        if shardsets[split]["num_samples"] < world:
            raise UserError(f"the {split} set has {shardsets[split]['num_samples']} samples, fewer than the {world} "
                            "processes; use fewer --gpus/--procs")
    if any(k < 1 for k in job.ks):
        raise UserError(f"--k values must be >= 1, got {list(job.ks)}")
    if job.temperature <= 0:
        raise UserError(f"--temperature must be > 0, got {job.temperature}")
    return run_workers(_knn_worker, gpus=gpus, procs=procs, args=(job,))
