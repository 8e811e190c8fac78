"""Loader throughput: input images/s (and views/s) of the multi-crop pipeline, DALI or reference.

``bench_loader(shardset, device="cpu", batch_size=32, threads=2, n_local=10, steps=20, warmup=5)``
builds the loader, pulls ``warmup`` untimed batches (pipeline build, thread start, shuffle buffer
fill), then times ``steps`` batches and returns a dict: wall-clock images/s and views/s, and the
CPU time per image summed over every thread and worker process (``/proc``), which does not depend
on what else the machine is running. ``loader="reference"`` runs the
PIL/torchvision baseline (:mod:`dino_pipe.data.reference`) with ``threads`` worker processes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from dino_pipe.config import DataConfig
from dino_pipe.data.recipe import multicrop_recipe
from dino_pipe.errors import UserError


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _pull(iterable_factory, n: int):
    """Take ``n`` batches, restarting the iterator at epoch ends; returns the last batch."""
    got, last = 0, None
    while got < n:
        for batch in iterable_factory():
            last = batch
            got += 1
            if got >= n:
                break
    return last


def bench_loader(shardset, cfg: DataConfig | None = None, *, device: str = "cpu", batch_size: int = 32,
                 threads: int = 2, n_local: int | None = 10, steps: int = 20, warmup: int = 5,
                 loader: str = "dali", global_size: int | None = None, local_size: int | None = None) -> dict:
    """Time ``steps`` batches after ``warmup``; images/s counts input images, views/s every crop."""
    cfg = cfg or DataConfig()
    changes = {"batch_size": batch_size, "threads": threads}
    if n_local is not None:
        changes["n_local"] = n_local
    if global_size:
        changes["global_size"] = global_size
    if local_size:
        changes["local_size"] = local_size
    cfg = dataclasses.replace(cfg, **changes)
    if steps < 1 or warmup < 0:
        raise UserError("bench loader: --steps must be >= 1 and --warmup >= 0")
    if loader == "dali":
        from dino_pipe.data.loader import ViewLoader

        dl = ViewLoader(shardset, cfg, device=device, batch_size=batch_size)
        factory = lambda: iter(dl)  # noqa: E731
        pids = [os.getpid()]
        sync = _cuda_sync if dl.kind == "cuda" else (lambda: None)
        info = dl.describe()
    elif loader == "reference":
        from dino_pipe.data.reference import reference_loader

        dl = reference_loader(shardset, cfg, batch_size=batch_size, workers=threads)
        it = iter(dl)
        factory = lambda: it  # noqa: E731  (endless)
        pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
        sync = lambda: None  # noqa: E731
        info = {"device": "cpu", "workers": threads}
    else:
        raise UserError(f"bench loader: unknown loader '{loader}' (dali or reference)")
    _pull(factory, warmup) if warmup else None
    sync()
    c0, t0 = _cpu_seconds(pids), time.perf_counter()
    _pull(factory, steps)
    sync()
    seconds = time.perf_counter() - t0
    cpu = _cpu_seconds(pids) - c0
    views = len(multicrop_recipe(cfg))
    images = steps * batch_size
    if loader == "dali":
        dl.close()
    return {
        "loader": loader,
        "device": info.get("device", device),
        "batch_size": batch_size,
        "threads": threads,
        "n_local": cfg.n_local,
        "global_size": cfg.global_size,
        "local_size": cfg.local_size,
        "views_per_image": views,
        "resize": ("PIL bilinear" if cfg.interp == "linear" else "PIL bicubic")
        if loader == "reference"
        else f"DALI {cfg.interp}",
        "warmup": warmup,
        "steps": steps,
        "seconds": round(seconds, 4),
        "images_per_s": round(images / seconds, 2),
        "views_per_s": round(images * views / seconds, 2),
        "cpu_ms_per_image": round(1000 * cpu / images, 2),  # all threads/worker processes; robust to machine load
    }


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()
