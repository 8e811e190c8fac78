#!/usr/bin/env python
"""Training loader images/s: streaming from S3 vs the whole-set cache vs local disk, same set, same machine, one run.

    python tools/bench_stream.py [--images 480] [--per-shard 24] [--image-size 200] [--rounds 3] [--steps 24]
                                 [--warmup 6] [--batch-size 32] [--threads 2] [--n-local 2] [--global-size 96]
                                 [--local-size 48] [--cache-fraction 0.2] [--json out.json]

A local moto server is started on 127.0.0.1 (``DINO_PIPE_MOTO_SERVER``, ``moto_server`` on PATH or
``.venv-moto``); a photo shard set is written locally and uploaded. Each round, in rotating order so all three
see the same machine load, times ``--steps`` batches after ``--warmup`` of:

* ``local``: :class:`~dino_pipe.data.loader.ViewLoader` on the local folder;
* ``cache``: a fresh cache, the whole set fetched (timed apart: one GET per tar and per .idx), then the same loader
  on the cache folder;
* ``stream``: :class:`~dino_pipe.data.stream_loader.StreamViewLoader` on the ``s3://`` URL with the cache bounded
  to ``--cache-fraction`` of the set (the prefetch is warm after the warm-up batches); its GETs, bytes and the
  largest size the stream folder reached (sampled by a thread) are recorded;
* ``stream_local``: the same streaming loader on the local folder (no server: what streaming itself costs here).

Each mode also records the CPU ms per image of this process (all its threads; the S3 server is another process
on the same cores, so on a small machine its CPU shows up as lower images/s for the S3 modes).

Prints per-round images/s, the medians and the ratios to local disk, and the 1-minute load average.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require("boto3", extras="dev")

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def time_loader(loader, warmup: int, steps: int) -> tuple[float, float]:
    """(images/s, CPU ms per image of this process: all its threads, not the S3 server's) of ``steps`` batches
    after ``warmup`` (epochs restart as needed)."""
    got, t0, c0 = 0, time.perf_counter(), time.process_time()
    while got < warmup + steps:
        for _ in loader:
            got += 1
            if got == warmup:
                t0, c0 = time.perf_counter(), time.process_time()
            if got == warmup + steps:
                break
    images = steps * loader.batch_size
    return images / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / images


class Peak:
    """A thread sampling the bytes under ``folder``; ``peak`` is the largest sample."""

    def __init__(self, folder: Path):
        self.folder, self.peak, self.stop = folder, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for root, _, names in os.walk(self.folder):
                for n in names:
                    try:
                        total += os.stat(os.path.join(root, n)).st_size
                    except FileNotFoundError:
                        pass
            self.peak = max(self.peak, total)
            time.sleep(0.002)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def one_round(modes: list[str], local: Path, url: str, cfg, work: Path, r: int, args, set_bytes: int) -> dict:
    from dino_pipe.data.loader import ViewLoader
    from dino_pipe.data.stream_loader import StreamViewLoader
    from dino_pipe.shards.fetch import fetch_shardset
    from dino_pipe.storage.cache import CacheSettings

    out = {}
    for mode in modes:
        if mode == "local":
            loader = ViewLoader(local, cfg)
        elif mode == "cache":
            settings = CacheSettings.resolve(str(work / f"cache-{r}"), gb=2 * set_bytes / 1e9)
            t0 = time.perf_counter()
            folder = fetch_shardset(url, settings)
            out["cache_fetch_s"] = time.perf_counter() - t0
            loader = ViewLoader(folder, cfg)
        else:
            bound = args.cache_fraction * set_bytes
            settings = CacheSettings.resolve(str(work / f"{mode}-{r}"), gb=bound / 1e9)
            loader = StreamViewLoader(url if mode == "stream" else str(local), dataclasses.replace(
                cfg, read_mode="stream"), settings=settings, local_world_size=1)
        try:
            with Peak(work / f"{mode}-{r}") as peak:
                out[mode], out[f"{mode}_cpu_ms_per_image"] = time_loader(loader, args.warmup, args.steps)
            if mode.startswith("stream"):
                out[f"{mode}_fetch"] = {**loader.stats(), "peak_cache_bytes": peak.peak,
                                        "cache_bound_bytes": loader.max_bytes}
        finally:
            loader.close()
        shutil.rmtree(work / f"cache-{r}", ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("images", 480), ("per-shard", 24), ("image-size", 200), ("rounds", 3), ("steps", 24),
                          ("warmup", 6), ("batch-size", 32), ("threads", 2), ("n-local", 2), ("global-size", 96),
                          ("local-size", 48)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--cache-fraction", type=float, default=0.2, help="stream cache bound as a share of the set")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from bench_loader import make_sample_shardset
    from bench_s3 import start_moto

    from dino_pipe.config import DataConfig
    from dino_pipe.storage.store import open_store

    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    proc, endpoint = start_moto(work / "server.log")
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        local = make_sample_shardset(work / "local", args.images, args.per_shard,
                                     size=(args.image_size, args.image_size * 7 // 8))
        store = open_store("s3://bench/set")
        for p in sorted(local.iterdir()):
            store.put_file(p.name, p)
        set_bytes = sum(p.stat().st_size for p in local.glob("*.tar"))
        cfg = dataclasses.replace(DataConfig(), batch_size=args.batch_size, threads=args.threads,
                                  n_local=args.n_local, global_size=args.global_size, local_size=args.local_size)
        modes, rounds = ["local", "cache", "stream", "stream_local"], []
        for r in range(args.rounds):
            order = modes[r % len(modes):] + modes[: r % len(modes)]
            res = one_round(order, local, store.url, cfg, work, r, args, set_bytes)
            res["load_1min"] = os.getloadavg()[0]
            rounds.append(res)
            print(f"round {r}: " + ", ".join(f"{m} {res[m]:.1f}" for m in modes) + " images/s; "
                  f"fetch whole {res['cache_fetch_s']:.2f} s; stream peak {res['stream_fetch']['peak_cache_bytes']} "
                  f"of {res['stream_fetch']['cache_bound_bytes']} bytes (load {res['load_1min']:.1f})", flush=True)
        med = {m: statistics.median(r[m] for r in rounds) for m in modes}
        cpu = {m: statistics.median(r[f"{m}_cpu_ms_per_image"] for r in rounds) for m in modes}
        result = {"settings": vars(args), "set": {"images": args.images, "shards": len(list(local.glob('*.tar'))),
                                                  "MB": round(set_bytes / 1e6, 2)},
                  "rounds": rounds, "median_images_per_s": med, "median_cpu_ms_per_image": cpu,
                  "stream_over_local": round(med["stream"] / med["local"], 3),
                  "cache_over_local": round(med["cache"] / med["local"], 3),
                  "stream_local_over_local": round(med["stream_local"] / med["local"], 3),
                  "cache_fetch_s_median": statistics.median(r["cache_fetch_s"] for r in rounds)}
        print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return result
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with needs_install("dev"):
        main()
