#!/usr/bin/env python
"""Our batch runner (:class:`dino_pipe.data.loader.ViewLoader`) vs DALI's ``DALIGenericIterator`` on the same
pipeline, side by side in one run.

    python tools/bench_runner.py [SHARDSET | --images 384 --image-size 400] [--rounds 5] [--steps 24] [--warmup 4]
                                 [--batch-size 32] [--threads 2] [--n-local 2] [--global-size 224]
                                 [--local-size 96] [--device cpu] [--json out.json]

Both iterate the very same DALI graph (``ViewLoader._make``: reader, decode, 2 global + ``--n-local`` local crops,
labels), built the same way; only the Python around ``pipe.run()`` differs: ours hands out ``ViewBatch`` (views as
torch tensors, labels parsed to int64), DALI's iterator a dict of torch tensors (labels as raw bytes). Rounds
alternate the two so both see the same machine load; each round times ``--steps`` batches after ``--warmup``.
Prints seconds per ``--steps`` batches per round, medians and the ratio (DALI's time / ours: >= 1.0 means ours is
at least as fast), and the 1-minute load average. Without SHARDSET a photo shard set is written to a temp folder.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import require  # noqa: E402

require("nvidia.dali", extras="sample")

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _loader(shardset: Path, args):
    import dataclasses

    from dino_pipe.config import DataConfig
    from dino_pipe.data.loader import ViewLoader

    cfg = dataclasses.replace(DataConfig(), batch_size=args.batch_size, threads=args.threads, n_local=args.n_local,
                              global_size=args.global_size, local_size=args.local_size)
    return ViewLoader(shardset, cfg, device=args.device)


def time_ours(shardset: Path, args) -> float:
    """Seconds for ``steps`` batches of our runner, after ``warmup`` (epochs restart as needed)."""
    loader = _loader(shardset, args)
    try:
        got, t0 = 0, None
        while got < args.warmup + args.steps:
            for _ in loader:
                got += 1
                if got == args.warmup:
                    _sync(args)
                    t0 = time.perf_counter()
                if got == args.warmup + args.steps:
                    break
        _sync(args)
        return time.perf_counter() - t0
    finally:
        loader.close()


def time_dali_iterator(shardset: Path, args) -> float:
    """Seconds for ``steps`` batches of ``DALIGenericIterator`` over the same pipeline, after ``warmup``."""
    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    loader = _loader(shardset, args)
    pipe = loader._make(None)
    pipe.build()
    names = [s.name for s in loader.specs] + (["labels"] if loader.shards.labeled else [])
    it = DALIGenericIterator([pipe], names, reader_name="reader", last_batch_policy=LastBatchPolicy.DROP,
                             auto_reset=True)
    try:
        got, t0 = 0, None
        while got < args.warmup + args.steps:
            for _ in it:
                got += 1
                if got == args.warmup:
                    _sync(args)
                    t0 = time.perf_counter()
                if got == args.warmup + args.steps:
                    break
        _sync(args)
        return time.perf_counter() - t0
    finally:
        del it, pipe
        loader.close()


def _sync(args) -> None:
    if args.device == "cuda":
        import torch

        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shardset", type=Path, nargs="?")
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-local", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=400, help="width of the generated photo crops (no SHARDSET)")
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=96)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    shardset = args.shardset
    if shardset is None:
        from bench_loader import make_sample_shardset

        shardset = make_sample_shardset(Path(tempfile.mkdtemp(prefix="bench-runner-")) / "set", args.images,
                                        size=(args.image_size, args.image_size * 7 // 8))
    rows: dict[str, list[float]] = {"ours_s": [], "dali_iterator_s": [], "load_1min": []}
    for r in range(args.rounds):
        first, second = (time_ours, time_dali_iterator) if r % 2 == 0 else (time_dali_iterator, time_ours)
        for fn in (first, second):
            rows["ours_s" if fn is time_ours else "dali_iterator_s"].append(round(fn(shardset, args), 4))
        rows["load_1min"].append(os.getloadavg()[0])
        print(f"round {r}: ours {rows['ours_s'][-1]:.3f} s, DALIGenericIterator {rows['dali_iterator_s'][-1]:.3f} s "
              f"per {args.steps} batches (load {rows['load_1min'][-1]:.1f})", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "rounds": rows, "median": med,
              "dali_over_ours": round(med["dali_iterator_s"] / med["ours_s"], 3),
              "images_per_s": {"ours": round(args.steps * args.batch_size / med["ours_s"], 1),
                               "dali_iterator": round(args.steps * args.batch_size / med["dali_iterator_s"], 1)}}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
