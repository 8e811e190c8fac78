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
Prints wall and CPU seconds (this process, all threads) per ``--steps`` batches per round, each iterator's own
time per batch (wall time outside DALI's pipeline calls: conversions, label parsing, bookkeeping), medians and
the ratios (DALI's time / ours: >= 1.0 means ours is at least as fast), and the 1-minute load average. Without
SHARDSET a photo shard set is written to a temp folder.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

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


def time_ours(shardset: Path, args) -> tuple[float, float, float]:
    """(wall, CPU, inside DALI) seconds for ``steps`` batches of our runner after ``warmup`` (epochs restart)."""
    loader = _loader(shardset, args)
    try:
        return _time(lambda: iter(loader), args)
    finally:
        loader.close()


def time_dali_iterator(shardset: Path, args) -> tuple[float, float, float]:
    """(wall, CPU, inside DALI) seconds for ``steps`` batches of ``DALIGenericIterator`` after ``warmup``."""
    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    loader = _loader(shardset, args)
    pipe = loader._make(None)
    pipe.build()
    names = [s.name for s in loader.specs] + (["labels"] if loader.shards.labeled else [])
    it = DALIGenericIterator([pipe], names, reader_name="reader", last_batch_policy=LastBatchPolicy.DROP,
                             auto_reset=True)
    try:
        return _time(lambda it=it: it, args)
    finally:
        del it, pipe
        loader.close()


class _DaliClock:
    """Seconds spent inside DALI's pipeline calls (``run``, ``schedule_run``, ``share_outputs``, ``release_outputs``,
    outermost calls only) while active: the rest of a batch's wall time is the runner's own Python."""

    NAMES = ("run", "schedule_run", "share_outputs", "release_outputs", "outputs")

    def __init__(self):
        self.seconds, self.depth, self.saved = 0.0, 0, {}

    def __enter__(self):
        from nvidia.dali import Pipeline

        for name in self.NAMES:
            self.saved[name] = getattr(Pipeline, name)
            setattr(Pipeline, name, self._wrap(self.saved[name]))
        return self

    def _wrap(self, fn):
        def timed(*a, **k):
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.seconds += time.perf_counter() - t0
        return timed

    def __exit__(self, *exc):
        from nvidia.dali import Pipeline

        for name, fn in self.saved.items():
            setattr(Pipeline, name, fn)


def _time(epoch, args) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process: all threads, seconds inside DALI's calls) for ``steps`` batches
    after ``warmup``."""
    got, t0, c0 = 0, time.perf_counter(), time.process_time()
    with _DaliClock() as clock:
        while got < args.warmup + args.steps:
            for _ in epoch():
                got += 1
                if got == args.warmup:
                    _sync(args)
                    t0, c0, clock.seconds = time.perf_counter(), time.process_time(), 0.0
                if got == args.warmup + args.steps:
                    break
        _sync(args)
        return time.perf_counter() - t0, time.process_time() - c0, clock.seconds


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
    rows: dict[str, list[float]] = {k: [] for k in ("ours_s", "dali_iterator_s", "ours_cpu_s", "dali_iterator_cpu_s",
                                                    "ours_own_ms_per_batch", "dali_iterator_own_ms_per_batch",
                                                    "load_1min")}
    for r in range(args.rounds):
        first, second = (time_ours, time_dali_iterator) if r % 2 == 0 else (time_dali_iterator, time_ours)
        for fn in (first, second):
            name = "ours" if fn is time_ours else "dali_iterator"
            wall, cpu, in_dali = fn(shardset, args)
            rows[f"{name}_own_ms_per_batch"].append(round(1000 * (wall - in_dali) / args.steps, 3))
            rows[f"{name}_s"].append(round(wall, 4))
            rows[f"{name}_cpu_s"].append(round(cpu, 4))
        rows["load_1min"].append(os.getloadavg()[0])
        print(f"round {r}: ours {rows['ours_s'][-1]:.3f} s ({rows['ours_cpu_s'][-1]:.3f} CPU s), DALIGenericIterator "
              f"{rows['dali_iterator_s'][-1]:.3f} s ({rows['dali_iterator_cpu_s'][-1]:.3f} CPU s) per {args.steps} "
              f"batches; own Python per batch: ours {rows['ours_own_ms_per_batch'][-1]:.2f} ms, DALI's "
              f"{rows['dali_iterator_own_ms_per_batch'][-1]:.2f} ms (load {rows['load_1min'][-1]:.1f})", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "rounds": rows, "median": med,
              "dali_over_ours": round(med["dali_iterator_s"] / med["ours_s"], 3),
              "dali_over_ours_cpu": round(med["dali_iterator_cpu_s"] / med["ours_cpu_s"], 3),
              "images_per_s": {"ours": round(args.steps * args.batch_size / med["ours_s"], 1),
                               "dali_iterator": round(args.steps * args.batch_size / med["dali_iterator_s"], 1)}}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    with needs_install("sample"):
        main()
