"""``bench train``: images/s of the full DINO training step, fed by real shards vs synthetic tensors.

Runs :class:`~dino_pipe.train.trainer.DINOTrainer` (the exact step ``train`` runs) in one process
for ``warmup`` + ``steps`` steps twice: once from the real DALI :class:`ViewLoader` over a shard
set and once from one fixed synthetic batch already on the device (zero data cost). The ratio
tells how much the input pipeline slows training; ``data_wait_pct`` is the share of wall time spent
waiting for the next batch. Reports median step time, images/s (images, not crops) and peak GPU
memory. Steps run without the trainer's host sync (as training's non-logging steps); timing
waits for the device once per step.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from dino_pipe import distributed as D
from dino_pipe.config import Config
from dino_pipe.data.recipe import multicrop_recipe, n_global_views
from dino_pipe.errors import UserError
from dino_pipe.train.trainer import DINOTrainer, resolve_precision


def _measure(cfg: Config, env: D.DistEnv, loader, steps: int, warmup: int, label: str, progress: bool) -> dict:
    spe = max(len(loader), 1)
    trainer = DINOTrainer(cfg, env, steps_per_epoch=max(spe, steps + warmup))
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, waits = [], []
    it = iter(loader)
    from dino_pipe.progress import make_progress

    with make_progress("step", disable=not progress) as bar:
        task = bar.add_task(f"bench {label}", total=warmup + steps)
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            t1 = time.perf_counter()
            trainer.step(batch.views, i, sync=False)  # as training's non-logging steps
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # one wait per step, for the step time
            t2 = time.perf_counter()
            if i >= warmup:
                times.append(t2 - t0)
                waits.append(t1 - t0)
            bar.update(task, advance=1)
    images = cfg.data.batch_size
    med = statistics.median(times)
    out = {
        "median_step_s": med,
        "images_per_s": images / med,
        "crops_per_s": images * len(multicrop_recipe(cfg.data)) / med,
        "data_wait_pct": 100.0 * sum(waits) / sum(times),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del trainer
    return out


def bench_train(cfg: Config, data: str | Path | None = None, *, steps: int = 30, warmup: int = 10,
                gpus: int | None = None, progress: bool = True) -> dict:
    """Measure the training step on synthetic tensors and (when ``data`` is given) on real shards."""
    from dino_pipe.data.inputs import check_data, local_data, make_loader
    from dino_pipe.data.synthetic import SyntheticViewLoader

    if gpus is None:
        gpus = min(1, D.default_gpus())
    if gpus > 1:
        raise UserError("bench train measures one process: use --gpus 1 (or 0 for the CPU)")
    device, _ = D.check_local_request(gpus, 1)
    env = D.DistEnv(device=device)
    D.init_process_group(env)
    n = (steps + warmup) * cfg.data.batch_size
    result: dict = {
        "arch": cfg.model.arch,
        "device": device,
        "batch_size": cfg.data.batch_size,
        "views": f"{n_global_views(multicrop_recipe(cfg.data))}x{cfg.data.global_size} + "
                 f"{cfg.data.n_local}x{cfg.data.local_size}",
        "precision": resolve_precision(cfg.train.precision, device),
        "compile": cfg.train.compile,
        "steps": steps,
        "warmup": warmup,
    }
    synth = SyntheticViewLoader(cfg.data, num_samples=n, device=device, fixed=True)
    result["synthetic"] = _measure(cfg, env, synth, steps, warmup, "synthetic", progress)
    if data is not None:
        data = local_data(data, cfg, progress)
        check_data(data)
        loader = make_loader(data, cfg, env)
        if len(loader) < 1:
            raise UserError(f"--data {data}: too few samples for one batch of {cfg.data.batch_size}")
        result["shards"] = _measure(cfg, env, loader, steps, warmup, "shards", progress)
        result["shards_vs_synthetic"] = result["shards"]["images_per_s"] / result["synthetic"]["images_per_s"]
    return result
