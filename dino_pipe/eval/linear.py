"""``dino-pipe eval linear``: a linear classifier on frozen backbone features (the DINO linear probe).

Features (no gradient into the backbone):

* ViT: the final-norm CLS tokens of the last ``n`` blocks, concatenated
  (``eval.linear_n_last_blocks``, 4 for ViT-S/16 in DINO), plus, with
  ``eval.linear_avgpool_patchtokens`` (DINO's ViT-B setting, with ``n = 1``), the mean of the last
  block's final-norm patch tokens: ``dim = D * (n + avgpool)``. timm's
  ``get_intermediate_layers(x, n, return_prefix_tokens=True, norm=True)`` gives exactly these
  normed tokens (as the reference ``get_intermediate_layers`` does).
* CNN: the globally pooled features.

Training: ``logits = W f + b`` (W ~ N(0, 0.01), b = 0), cross-entropy, SGD with momentum 0.9 and
no weight decay, ``lr = eval.linear_lr * global_batch / 256`` with a cosine schedule to 0 over
``eval.linear_epochs`` (stepped per epoch); train views are a random resized crop
(``eval.linear_crop_scale``, bicubic) to ``data.eval_crop`` + horizontal flip through DALI; val
images go through the evaluation pipeline once (their features are cached). Every epoch reports
val top-1 / top-5; the best epoch is kept in the result.

Resume: after each epoch ``OUT/linear_state.pt`` (head, optimizer, schedule, epoch, history, each
rank's DALI loader state) and ``OUT/linear.json`` are written atomically; the same command
continues from the last finished epoch.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dino_pipe.atomic import atomic_open, atomic_write_json
from dino_pipe.config import Config, config_from_dict
from dino_pipe.errors import UserError
from dino_pipe.eval.features import input_dtype
from dino_pipe.eval.inputs import checkpoint_facts, labelled_shardset, resolve_config
from dino_pipe.eval.workers import WorkerContext, run_workers
from dino_pipe.models.backbone import is_vit
from dino_pipe.progress import make_progress

STATE_FILE = "linear_state.pt"
RESULT_FILE = "linear.json"


class ProbeFeatures(nn.Module):
    """Frozen features for the probe: ``[B, 3, H, W]`` -> ``[B, dim]`` (see the module docstring)."""

    def __init__(self, backbone: nn.Module, n_last_blocks: int = 4, avgpool_patchtokens: bool = False):
        super().__init__()
        self.backbone = backbone
        self.vit = hasattr(backbone, "get_intermediate_layers") and hasattr(backbone, "blocks")
        self.n_last_blocks = n_last_blocks
        self.avgpool_patchtokens = avgpool_patchtokens
        if self.vit and n_last_blocks > len(backbone.blocks):
            raise UserError(f"eval.linear_n_last_blocks={n_last_blocks} but the ViT has {len(backbone.blocks)} blocks")

    @property
    def dim(self) -> int:
        d = int(self.backbone.num_features)
        return d * (self.n_last_blocks + int(self.avgpool_patchtokens)) if self.vit else d

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if not self.vit:
            return self.backbone(images).float()
        layers = self.backbone.get_intermediate_layers(
            images, n=self.n_last_blocks, return_prefix_tokens=True, norm=True
        )
        feats = [prefix[:, 0] for _, prefix in layers]  # CLS token of each of the last n blocks
        if self.avgpool_patchtokens:
            feats.append(layers[-1][0].mean(dim=1))
        return torch.cat(feats, dim=-1).float()


class LinearClassifier(nn.Module):
    """``[B, dim]`` -> logits ``[B, num_classes]``; weights N(0, 0.01), bias 0 (as in DINO)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


def topk_correct(logits: Tensor, labels: Tensor) -> tuple[int, int]:
    """(# top-1 correct, # top-5 correct); top-5 is top-min(5, classes)."""
    k = min(5, logits.shape[1])
    pred = logits.topk(k, dim=1).indices
    hit = pred == labels[:, None]
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


def probe_view_spec(cfg: Config):
    """The train augmentation as a one-view recipe: random resized crop + flip, nothing else."""
    from dino_pipe.data.recipe import ViewSpec

    return ViewSpec(name="probe", size=cfg.data.eval_crop, scale=tuple(cfg.eval.linear_crop_scale),
                    aspect_ratio=tuple(cfg.data.aspect_ratio), flip_p=0.5)


def probe_train_loader(shardset: str, cfg: Config, ctx: WorkerContext, batch_size: int):
    """A :class:`~dino_pipe.data.loader.ViewLoader` whose recipe is the single probe view."""
    from dino_pipe.data.loader import ViewLoader

    return ViewLoader(shardset, cfg.data, device=ctx.device.type, device_id=ctx.device.index or 0,
                      rank=ctx.rank, world_size=ctx.world_size, seed=cfg.train.seed, batch_size=batch_size,
                      specs=[probe_view_spec(cfg)])  # same graph, one view: RandomResizedCrop + flip


@dataclass
class LinearJob:
    """Everything a linear-probe worker needs (picklable)."""

    config: dict
    checkpoint: str
    which: str
    random_init: bool
    train: str
    val: str
    out: str
    source: dict[str, Any] = field(default_factory=dict)
    shardsets: dict[str, dict] = field(default_factory=dict)
    stop_after: int | None = None  # finish this many epochs in this call, then return (tests)


def _fingerprint(job: LinearJob, cfg: Config, world: int) -> dict:
    e = cfg.eval
    return {"checkpoint": job.source.get("checkpoint"), "which": job.which, "random_init": job.random_init,
            "train": job.train, "val": job.val, "epochs": e.linear_epochs, "lr": e.linear_lr,
            "batch_size": e.batch_size, "world_size": world, "n_last_blocks": e.linear_n_last_blocks,
            "avgpool_patchtokens": e.linear_avgpool_patchtokens, "crop": cfg.data.eval_crop,
            "resize": cfg.data.eval_resize, "crop_scale": list(e.linear_crop_scale), "seed": cfg.train.seed}


def _save_state(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_open(path, "wb") as f:
        f.write(buf.getbuffer())


def _gather_objects(obj, ctx: WorkerContext) -> list:
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _val_features(probe: ProbeFeatures, job: LinearJob, cfg: Config, ctx: WorkerContext):
    from dino_pipe.data.loader import EvalLoader
    from dino_pipe.eval.features import check_exactly_once, extract_features

    loader = EvalLoader(job.val, cfg.data, device=ctx.device.type, device_id=ctx.device.index or 0, rank=ctx.rank,
                        world_size=ctx.world_size, batch_size=cfg.eval.batch_size)
    with make_progress("img", disable=not ctx.is_main) as bar:
        task = bar.add_task("val features", total=loader.rank_samples)
        local = extract_features(probe, loader, ctx, num_samples=loader.num_samples, feature_fn=lambda m, x: m(x),
                                 dtype=torch.float32, progress=lambda b: bar.advance(task, b))
    check_exactly_once(local.indices, loader.num_samples, ctx)
    return local.features, local.labels.to(ctx.device), loader.num_samples


@dataclass
class _ProbeRun:
    """One rank's linear probe: the frozen features, the head and its optimizer, the train loader, and the
    epochs so far (``history``; ``resumed_from``: the epoch a resume started at)."""

    job: LinearJob
    cfg: Config
    probe: ProbeFeatures
    head: LinearClassifier
    optimizer: Any
    schedule: Any
    train_loader: Any
    lr: float
    global_batch: int
    fingerprint: dict
    history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None

    @property
    def out(self) -> Path:
        return Path(self.job.out)

    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE


def _linear_worker(ctx: WorkerContext, job: LinearJob) -> dict | None:
    """One rank: set the probe up (resuming when a state is there), train it epoch by epoch with a val
    measurement and a saved state after each, and return the result on rank 0."""
    from torch.nn.parallel import DistributedDataParallel

    run = _setup_probe(ctx, job)
    if run.state_path.is_file():
        _resume(run, ctx)
    epochs = run.cfg.eval.linear_epochs
    start_epoch = run.resumed_from or 0
    model = DistributedDataParallel(run.head, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) \
        if ctx.distributed else run.head
    val = _val_features(run.probe, job, run.cfg, ctx) if start_epoch < epochs else (None, None, 0)
    for epochs_run, epoch in enumerate(range(start_epoch, epochs)):
        if job.stop_after is not None and epochs_run >= job.stop_after:
            break
        t0 = time.perf_counter()
        lr_now = run.optimizer.param_groups[0]["lr"]
        loss_sum = _train_epoch(run, model, ctx, epoch)
        run.schedule.step()
        run.history.append(_epoch_record(run, ctx, val, epoch, lr_now, loss_sum, t0))
        _save_progress(run, ctx, epoch)
        if ctx.distributed:
            dist.barrier()
    run.train_loader.close()
    if not ctx.is_main:
        return None
    final = _linear_result(run, ctx, complete=len(run.history) == epochs)
    atomic_write_json(run.out / RESULT_FILE, final)
    return final


def _setup_probe(ctx: WorkerContext, job: LinearJob) -> _ProbeRun:
    """The frozen backbone's probe features, a fresh head (seeded), SGD with the scaled lr, the cosine
    schedule and the train loader."""
    from dino_pipe.eval.trained_backbone import load_backbone

    cfg = config_from_dict(job.config)
    e = cfg.eval
    num_classes = int(job.shardsets["train"]["num_classes"])
    backbone = load_backbone(job.checkpoint, job.which, random_init=job.random_init, seed=cfg.train.seed).model
    probe = ProbeFeatures(backbone, e.linear_n_last_blocks if is_vit(cfg.model.arch) else 1,
                          e.linear_avgpool_patchtokens).to(ctx.device).eval()

    torch.manual_seed(cfg.train.seed)
    head = LinearClassifier(probe.dim, num_classes).to(ctx.device)
    global_batch = e.batch_size * ctx.world_size
    lr = e.linear_lr * global_batch / 256.0
    optimizer = torch.optim.SGD(
        head.parameters(), lr=lr, momentum=e.linear_momentum, weight_decay=e.linear_weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=e.linear_epochs, eta_min=0.0)
    train_loader = probe_train_loader(job.train, cfg, ctx, e.batch_size)
    return _ProbeRun(job=job, cfg=cfg, probe=probe, head=head, optimizer=optimizer, schedule=schedule,
                     train_loader=train_loader, lr=lr, global_batch=global_batch,
                     fingerprint=_fingerprint(job, cfg, ctx.world_size))


def _resume(run: _ProbeRun, ctx: WorkerContext) -> None:
    """Continue from ``OUT/linear_state.pt``: head, optimizer, schedule, history, this rank's loader position and
    the RNG; a damaged state or one of other settings is a UserError saying what to do."""
    state_path = run.state_path
    damaged = (
        f"{state_path}: damaged or not a linear-probe state ({{}}); delete it to restart the probe from epoch 0"
    )
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, garbage, or a pickle that is not plain data
        if isinstance(e, PermissionError):
            raise
        raise UserError(damaged.format((str(e).strip().splitlines() or [type(e).__name__])[0][:160])) from None
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), dict):
        raise UserError(damaged.format("no probe fingerprint in it"))
    fingerprint = run.fingerprint
    if state.get("fingerprint") != fingerprint:
        diff = sorted(k for k in fingerprint if (state.get("fingerprint") or {}).get(k) != fingerprint[k])
        raise UserError(f"{state_path}: a linear probe with other settings ({', '.join(diff)}) is there; "
                        "use another --out or delete the folder")
    try:
        run.head.load_state_dict(state["head"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.schedule.load_state_dict(state["schedule"])
        run.resumed_from = int(state["epoch"])
        run.history = list(state["history"])
        loader_states = state["loader_ranks"]
        run.train_loader.load_state_dict(loader_states[ctx.rank])
        torch.set_rng_state(state["torch_rng"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(
            damaged.format(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}")
        ) from None


def _train_epoch(run: _ProbeRun, model: nn.Module, ctx: WorkerContext, epoch: int) -> Tensor:
    """One pass over the train loader: cross-entropy of the head on frozen features, SGD steps
    -> ``[sum of losses, samples]`` of this rank."""
    e, probe, optimizer = run.cfg.eval, run.probe, run.optimizer
    run.head.train()
    loss_sum = torch.zeros(2, device=ctx.device)  # [sum of losses, samples]
    with make_progress("img", disable=not ctx.is_main) as bar:
        task = bar.add_task(f"linear epoch {epoch + 1}/{e.linear_epochs}", total=len(run.train_loader) * e.batch_size)
        for batch in run.train_loader:
            if batch.labels is None:
                raise UserError(f"shard set {run.job.train}: unlabeled; the linear probe needs class labels")
            feats = probe(batch.views[0].to(ctx.device, input_dtype(probe)))
            labels = batch.labels.to(ctx.device)
            loss = F.cross_entropy(model(feats), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += torch.stack(
                [loss.detach() * labels.numel(), torch.tensor(float(labels.numel()), device=ctx.device)]
            )
            bar.advance(task, labels.numel())
    return loss_sum


def _epoch_record(run: _ProbeRun, ctx: WorkerContext, val: tuple, epoch: int, lr_now: float, loss_sum: Tensor,
                  t0: float) -> dict:
    """Val top-1 / top-5 of the head on the cached val features and the mean train loss, summed over ranks."""
    val_feats, val_labels, n_val = val
    run.head.eval()
    with torch.no_grad():
        c1, c5 = topk_correct(run.head(val_feats), val_labels)
    counts = torch.tensor([c1, c5], dtype=torch.float64, device=ctx.device)
    if ctx.distributed:
        dist.all_reduce(counts)
        dist.all_reduce(loss_sum)
    return {"epoch": epoch + 1, "lr": lr_now, "train_loss": float(loss_sum[0] / loss_sum[1].clamp(min=1)),
            "top1": 100.0 * float(counts[0]) / n_val, "top5": 100.0 * float(counts[1]) / n_val,
            "seconds": round(time.perf_counter() - t0, 3)}


def _save_progress(run: _ProbeRun, ctx: WorkerContext, epoch: int) -> None:
    """After an epoch: every rank's loader state gathered; rank 0 writes the state and ``linear.json``
    (atomically) and prints the epoch's line."""
    loader_states = _gather_objects(run.train_loader.state_dict(), ctx)
    if not ctx.is_main:
        return
    _save_state(run.state_path, {"fingerprint": run.fingerprint, "epoch": epoch + 1, "head": run.head.state_dict(),
                                 "optimizer": run.optimizer.state_dict(), "schedule": run.schedule.state_dict(),
                                 "history": run.history, "loader_ranks": loader_states,
                                 "torch_rng": torch.get_rng_state()})
    atomic_write_json(run.out / RESULT_FILE, _linear_result(run, ctx, complete=epoch + 1 == run.cfg.eval.linear_epochs))
    h = run.history[-1]
    from dino_pipe.progress import console

    console.print(
        f"epoch {h['epoch']}: loss {h['train_loss']:.4f}  top-1 {h['top1']:.2f}  top-5 {h['top5']:.2f}"
    )


def _linear_result(run: _ProbeRun, ctx: WorkerContext, complete: bool) -> dict:
    """The result dict (``linear.json``): protocol, sources, every epoch, the best and the last."""
    cfg, e, probe, history = run.cfg, run.cfg.eval, run.probe, run.history
    best = max(history, key=lambda h: (h["top1"], h["top5"])) if history else None
    return {
        "protocol": "linear",
        "checkpoint": run.job.source,
        "data": {**run.job.shardsets, "eval_resize": cfg.data.eval_resize, "eval_crop": cfg.data.eval_crop},
        "linear": {
            "epochs": e.linear_epochs,
            "lr": run.lr,
            "lr_per_256": e.linear_lr,
            "global_batch_size": run.global_batch,
            "optimizer": "sgd",
            "momentum": e.linear_momentum,
            "weight_decay": e.linear_weight_decay,
            "schedule": "cosine per epoch to 0",
            "n_last_blocks": probe.n_last_blocks if probe.vit else None,
            "avgpool_patchtokens": probe.avgpool_patchtokens if probe.vit else None,
            "feature_dim": probe.dim,
            "crop_scale": list(e.linear_crop_scale),
            "flip_p": 0.5,
        },
        "epochs": history,
        "best": best,
        "final": history[-1] if history else None,
        "resumed_from_epoch": run.resumed_from,
        "complete": complete,
        "world_size": ctx.world_size,
        "device": ctx.device.type,
        "output_dir": str(run.out),
    }


def evaluate_linear(
    checkpoint: str | Path,
    train: str | Path,
    val: str | Path,
    out: str | Path,
    *,
    which: str = "teacher",
    random_init: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    gpus: int = 0,
    procs: int = 1,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) the linear probe; returns the result dict also written to ``OUT/linear.json``."""

    base, source = checkpoint_facts(checkpoint, which, random_init)
    cfg = resolve_config(base, overrides)
    shardsets = {"train": labelled_shardset(train), "val": labelled_shardset(val)}
    if shardsets["train"]["classes"] != shardsets["val"]["classes"]:
        raise UserError(f"shard sets {train} and {val} name different classes; the probe needs the same label set")
    n_train = shardsets["train"]["num_samples"]
    world = gpus if gpus > 0 else procs
    if n_train // max(world, 1) < cfg.eval.batch_size:
        raise UserError(f"shard set {train}: {n_train} samples do not fill one batch of eval.batch_size="
                        f"{cfg.eval.batch_size} per process; lower eval.batch_size")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    job = LinearJob(config=cfg.to_dict(), checkpoint=source["checkpoint"], which=which, random_init=random_init,
                    train=str(train), val=str(val), out=str(out), source=source, shardsets=shardsets,
                    stop_after=stop_after)
    return run_workers(_linear_worker, gpus=gpus, procs=procs, args=(job,))
