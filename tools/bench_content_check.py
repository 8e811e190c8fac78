#!/usr/bin/env python
"""What the shard content check costs: sha256 of every shard vs decoding its images, side by side.

    python tools/bench_content_check.py SHARDSET [--rounds 3] [--threads 2] [--json out.json]
    python tools/bench_content_check.py shards/bench --make-sample 384   # first build a photo shard set

Each round hashes every tar of the set 10 times on one thread (files in the page cache, as after any
first read: the check then costs CPU only) with :func:`dino_pipe.data.shardset.check_sha256`'s
hashing, and times the DALI CPU loader on the same set twice: the training recipe (2 global + 10
local crops) and the cheapest reader (2 global crops, no locals). Prints per-round figures, the
medians, sha256 MB/s and the ratio "CPU ms to hash one image's bytes / CPU ms to load one image"
(CPU ms summed over all threads: robust to machine load).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require('numpy')

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def hash_round(shardset: Path, reps: int = 10) -> dict:
    from dino_pipe.data.shardset import file_sha256, read_manifest

    manifest = read_manifest(shardset)
    tars = [shardset / s["file"] for s in manifest["shards"]]
    for t in tars:  # into the page cache
        t.read_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        for t in tars:
            file_sha256(t)
    seconds, cpu = (time.perf_counter() - t0) / reps, (time.process_time() - c0) / reps
    nbytes = sum(t.stat().st_size for t in tars)
    n = manifest["num_samples"]
    return {"bytes": nbytes, "samples": n, "seconds": seconds, "mb_per_s": nbytes / 1e6 / seconds,
            "mb_per_cpu_s": nbytes / 1e6 / cpu, "cpu_ms_per_image": 1000 * cpu / n}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shardset", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--make-sample", type=int, default=0, metavar="N", help="first write N photo crops as a shard set")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from bench_loader import make_sample_shardset

    from dino_pipe.config import DataConfig
    from dino_pipe.data.bench import bench_loader

    if args.make_sample:
        make_sample_shardset(args.shardset, args.make_sample)
        print(f"wrote {args.make_sample} photo crops to {args.shardset}")
    rows: dict[str, list] = {"sha256": [], "train_views": [], "two_globals": []}
    common = dict(batch_size=args.batch_size, threads=args.threads, steps=args.steps, warmup=2)
    for r in range(args.rounds):
        h = hash_round(args.shardset)
        rows["sha256"].append(h)
        rows["train_views"].append(bench_loader(args.shardset, DataConfig(), n_local=10, **common))
        rows["two_globals"].append(bench_loader(args.shardset, DataConfig(), n_local=0, **common))
        print(f"round {r + 1}: sha256 {h['mb_per_s']:6.0f} MB/s wall, {h['mb_per_cpu_s']:6.0f} MB per CPU s "
              f"({h['cpu_ms_per_image']:.3f} CPU ms/img)   "
              f"loader 2+10 crops {rows['train_views'][-1]['cpu_ms_per_image']:6.2f} CPU ms/img   "
              f"2 crops {rows['two_globals'][-1]['cpu_ms_per_image']:6.2f} CPU ms/img")
    med = lambda rs, k: statistics.median(x[k] for x in rs)  # noqa: E731
    h_ms = med(rows["sha256"], "cpu_ms_per_image")
    result = {
        "shardset": str(args.shardset),
        "samples": rows["sha256"][0]["samples"],
        "bytes": rows["sha256"][0]["bytes"],
        "sha256_mb_per_s": round(med(rows["sha256"], "mb_per_s"), 1),
        "sha256_mb_per_cpu_s": round(med(rows["sha256"], "mb_per_cpu_s"), 1),
        "sha256_cpu_ms_per_image": round(h_ms, 4),
        "loader_cpu_ms_per_image": {k: med(rows[k], "cpu_ms_per_image") for k in ("train_views", "two_globals")},
        "hash_vs_load_ratio": {
            k: round(h_ms / med(rows[k], "cpu_ms_per_image"), 4) for k in ("train_views", "two_globals")
        },
        "rounds": rows,
    }
    print(
        f"median: sha256 {result['sha256_mb_per_cpu_s']:.0f} MB per CPU second "
        f"({result['sha256_mb_per_s']:.0f} MB/s wall) "
        f"= {h_ms:.3f} CPU ms per image; "
        f"hashing costs {100 * result['hash_vs_load_ratio']['train_views']:.2f} % of loading an image for training "
        f"(2+10 crops), {100 * result['hash_vs_load_ratio']['two_globals']:.2f} % of the cheapest load (2 crops)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    with needs_install():
        main()
