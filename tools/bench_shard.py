#!/usr/bin/env python
"""Benchmark ``dino-pipe shard`` side by side with two baselines, and break down where its time goes.

Builds (or takes, ``--src``) an ImageNet-like tree ``train/<class>/<n>.JPEG`` of JPEGs of ImageNet's
average size (500x375, quality 90, smooth multi-scale noise so the files weigh ~110 KB like photos;
deterministic), then, for several rounds (order rotated each round), packs it with

* **dino-pipe**: ``shard_tree`` (what ``dino-pipe shard`` calls) in a fresh process like the command's,
  timed inside it (interpreter start-up excluded), all cores, ``--check structure`` (default) or
  ``--check decode``;
* **wds+verify**: one process; for each file: read, PIL ``Image.open(...).verify()``,
  ``webdataset.ShardWriter.write({"__key__", "jpg", "cls"})`` (1000 samples / 128 MB shards);
* **tar**: GNU ``tar -cf`` of the tree (no validation, no index, no checksum, no fsync).

With ``--before CHECKOUT`` (another copy of dino-pipe, e.g. ``git worktree add /tmp/before main``), that
version's ``shard_tree`` runs as a fourth contender in the same rounds (in its own process, timed inside
it), which measures a change side by side.

Each run's wall seconds and CPU seconds (this process + its children) are divided by the images
written; the medians over rounds and their ratios are printed. The machine's load average is printed
with every run: other processes share the CPU, so compare the ratios of side-by-side rounds.

Then ``--breakdown N`` images are put through each stage of the writer alone, in this process,
each right after its file is read (as the writer does; the read is subtracted and listed): structural
check, sha256, tar write, one fsync per shard, the whole ``write_shard`` and the whole set with its
worker pool; plus the optional checks (1/8-scale decode, the cut-scan probe, PIL verify, a full
decode), in CPU milliseconds per image.

    python tools/bench_shard.py [--images 3000] [--rounds 5] [--workers 0] [--check structure] [--before CHECKOUT]
        [--json out.json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require('numpy', 'PIL', 'webdataset', extras='sample')

import argparse
import functools
import hashlib
import io
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIDTH, HEIGHT, QUALITY, CLASSES = 500, 375, 90, 10


# ---------------------------------------------------------------- the image tree


def make_image(i: int) -> bytes:
    """Image ``i`` of the set: smooth noise at three scales plus grain, JPEG quality 90 (~90-130 KB)."""
    rng = np.random.default_rng(i)
    acc = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    for cells, weight in ((4, 1.0), (16, 0.5), (64, 0.25)):
        small = rng.integers(0, 256, (max(2, cells * HEIGHT // WIDTH), cells, 3), dtype=np.uint8)
        acc += weight * np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BICUBIC), np.float32)
    grain = rng.normal(0, 20 + (i % 13), (HEIGHT, WIDTH, 3)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(acc / 1.75 + grain, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def _write_one(args: tuple[Path, int]) -> None:
    root, i = args
    path = root / "train" / f"c{i % CLASSES:02d}" / f"{i:06d}.JPEG"
    path.write_bytes(make_image(i))


def write_tree(root: Path, n: int) -> Path:
    """``root/train/cNN/NNNNNN.JPEG`` for images 0..n-1 (same bytes on every run)."""
    for c in range(CLASSES):
        (root / "train" / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
    with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        pool.map(_write_one, [(root, i) for i in range(n)], chunksize=32)
    return root


def list_tree(src: Path) -> list[tuple[Path, int]]:
    train = src / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    files = []
    for label, c in enumerate(classes):
        files += [(p, label) for p in sorted((train / c).iterdir()) if p.is_file()]
    return files


# ---------------------------------------------------------------- the three contenders


def run_dino_pipe(src: Path, out: Path, workers: int, check: str) -> int:
    from dino_pipe.shards.writer import ShardOptions, shard_tree

    result = shard_tree(src, out, ShardOptions(workers=workers, check=check), progress=False)
    return sum(s["num_samples"] for s in result["sets"])


def run_wds_verify(src: Path, out: Path, seed: int = 0) -> int:
    """The usual loop: read, PIL verify(), ShardWriter.write; returns images written."""
    import webdataset as wds

    files = list_tree(src)
    random.Random(seed).shuffle(files)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=1000, maxsize=128e6, verbose=0) as sink:
        for path, label in files:
            data = path.read_bytes()
            try:
                Image.open(io.BytesIO(data)).verify()
            except Exception:
                continue
            sink.write({"__key__": f"{path.parent.name}__{path.stem}", "jpg": data, "cls": label})
            written += 1
    return written


def run_tar(src: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-cf", str(out / "all.tar"), "-C", str(src), "train"], check=True)
    return len(list_tree(src))


_CHILD = """
import json, resource, sys, time
from dino_pipe.shards.writer import ShardOptions, shard_tree
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
c, t = cpu(), time.perf_counter()
r = shard_tree(sys.argv[1], sys.argv[2], ShardOptions(workers=int(sys.argv[3]), check=sys.argv[4]), progress=False)
print(json.dumps([sum(s["num_samples"] for s in r["sets"]), time.perf_counter() - t, cpu() - c]))
"""


def run_other_checkout(checkout: Path, src: Path, out: Path, workers: int, check: str) -> tuple[int, float, float]:
    """``shard_tree`` of another dino-pipe checkout (e.g. before a change), timed inside its own process."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    line = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(out), str(workers), check], env=env,
                          check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    n, wall, cpu = json.loads(line)
    return n, wall, cpu


def cpu_seconds() -> float:
    """CPU seconds of this process plus its finished children (worker pools, tar)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    """(images, wall s, CPU s) of one run."""
    c, t = cpu_seconds(), time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t, cpu_seconds() - c


def side_by_side(src: Path, tmp: Path, rounds: int, workers: int, check: str, before: Path | None) -> dict:
    """Run the contenders ``rounds`` times (rotating their order); per run ms per image."""
    runners = {
        "dino_pipe": lambda out: run_other_checkout(ROOT, src, out, workers, check),
        "wds_verify": lambda out: timed(functools.partial(run_wds_verify, src, out)),
        "tar": lambda out: timed(functools.partial(run_tar, src, out)),
    }
    if before is not None:
        runners["dino_pipe_before"] = lambda out: run_other_checkout(before, src, out, workers, check)
    names = list(runners)
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            out = tmp / f"out_{name}_{r}"
            load = os.getloadavg()[0]
            n, wall, cpu = runners[name](out)
            runs[name].append({"images": n, "wall_ms_per_image": 1e3 * wall / n, "cpu_ms_per_image": 1e3 * cpu / n,
                               "load_avg_before": load})
            print(f"round {r}: {name:10s} {n} images {wall:6.2f} s wall = {1e3 * wall / n:.3f} ms/img, "
                  f"{1e3 * cpu / n:.3f} CPU ms/img   (load avg before: {load:.2f})", flush=True)
            shutil.rmtree(out)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_ms_per_image", "cpu_ms_per_image")}
           for k, v in runs.items()}
    ratios = {}
    for base in [k for k in names if k != "dino_pipe"]:
        for m in ("wall_ms_per_image", "cpu_ms_per_image"):
            # speed of dino-pipe relative to the baseline, per round then median (> 1: dino-pipe faster)
            per_round = [b[m] / d[m] for b, d in zip(runs[base], runs["dino_pipe"])]
            ratios[f"vs_{base}_{m.split('_')[0]}"] = statistics.median(per_round)
    return {"runs": runs, "median": med, "speed_ratio": ratios}


# ---------------------------------------------------------------- where dino-pipe's time goes


def _stage_ms(files: list[Path], stage: Callable[[bytes], object]) -> float:
    """CPU ms per image of reading each file and running ``stage`` on its bytes (as the writer does:
    the data is hot in the cache)."""
    c = time.process_time()
    for p in files:
        with open(p, "rb") as f:
            stage(f.read())
    return 1e3 * (time.process_time() - c) / len(files)


def breakdown(src: Path, tmp: Path, n: int, workers: int) -> dict:
    """CPU ms per image of each stage of writing a shard, on the first ``n`` files, in this process:
    each stage runs right after its file is read; the read alone is subtracted (and listed)."""
    from dino_pipe.shards import image as image_mod
    from dino_pipe.shards.jpeg import inspect_jpeg
    from dino_pipe.shards.tar import TarShardWriter
    from dino_pipe.shards.writer import ShardTask, write_shard

    files = [p for p, _ in list_tree(src)][:n]
    out = tmp / "stages"
    out.mkdir()
    read = min(_stage_ms(files, lambda d: None) for _ in range(3))
    stages: dict[str, float] = {"read file (open + read)": read}
    with open(out / "t.tar", "wb") as f:
        w = TarShardWriter(f)

        def add(d: bytes) -> None:
            w.add(f"k{len(w.members)}.jpg", d)
            w.add(f"k{len(w.members)}.cls", b"1")

        measured = {
            "structural check (inspect_jpeg)": inspect_jpeg,
            "prepare_image(check=structure): structure + choices": image_mod.prepare_image,
            "sha256": lambda d: hashlib.sha256(d).digest(),
            "tar write (2 members per sample)": add,
            "prepare_image(check=decode): + 1/8 decode, cut-scan check": lambda d: image_mod.prepare_image(
                d, check="decode"),
            "verify's JPEG check (jpeg_problem)": image_mod.jpeg_problem,
            "cut-scan probe, forced (2 decodes at 1/8)": lambda d: image_mod.scan_cut_short(d, inspect_jpeg(d),
                                                                                          force=True),
            "PIL verify()": lambda d: Image.open(io.BytesIO(d)).verify(),
            "PIL full decode": lambda d: Image.open(io.BytesIO(d)).load(),
        }
        for name, stage in measured.items():
            stages[name] = _stage_ms(files, stage) - read
        f.flush()
        t = time.perf_counter()
        os.fsync(f.fileno())
        stages[f"fsync of that tar ({w.pos / 1e6:.0f} MB), wall"] = 1e3 * (time.perf_counter() - t) / n
    items = [(str(p), p.name, f"k{i}", 1) for i, p in enumerate(files)]
    stages["write_shard, whole (one process, with the read)"] = 1e3 * min(
        _cpu(lambda: write_shard(ShardTask(str(out), 0, items, 95, None))) for _ in range(3)) / n
    n_, wall, cpu = timed(lambda: run_dino_pipe(src, tmp / "whole", workers, "structure"))
    stages[f"shard_tree, whole set of {n_}, CPU incl. workers"] = 1e3 * cpu / n_
    stages[f"shard_tree, whole set of {n_}, wall"] = 1e3 * wall / n_
    for k, v in stages.items():
        print(f"  {k:60s} {v:7.3f} ms/img")
    return stages


def _cpu(fn: Callable[[], object]) -> float:
    c = time.process_time()
    fn()
    return time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, help="an existing ImageNet-like tree (default: build one)")
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0, help="dino-pipe workers (0 = all cores)")
    ap.add_argument("--check", default="structure", choices=["structure", "decode"], help="dino-pipe --check mode")
    ap.add_argument("--breakdown", type=int, default=1000, help="images for the per-stage breakdown (0: none)")
    ap.add_argument("--before", type=Path, help="another dino-pipe checkout to run side by side (before a change)")
    ap.add_argument("--tmp", type=Path, help="work folder (default: a new one under the system temp folder)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_shard_", dir=args.tmp))
    try:
        src = args.src
        if src is None:
            t = time.perf_counter()
            src = write_tree(tmp / "src", args.images)
            print(f"built {args.images} images in {time.perf_counter() - t:.1f}s under {src}")
        files = list_tree(src)
        sizes = [p.stat().st_size for p, _ in files]
        for p, _ in files:  # warm the page cache so every contender reads from memory
            p.read_bytes()
        print(f"{len(files)} images, {np.mean(sizes) / 1e3:.1f} KB mean ({min(sizes) / 1e3:.0f}-"
              f"{max(sizes) / 1e3:.0f} KB), {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.2f}")
        result = side_by_side(src, tmp, args.rounds, args.workers, args.check, args.before)
        med, ratio = result["median"], result["speed_ratio"]
        for k, v in med.items():
            print(f"median {k:10s} {v['wall_ms_per_image']:.3f} wall ms/img, {v['cpu_ms_per_image']:.3f} CPU ms/img")
        print("dino-pipe speed relative to (median of per-round ratios, > 1 = faster): "
              + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
        stages = breakdown(src, tmp, min(args.breakdown, len(files)), args.workers) if args.breakdown else {}
        if args.json:
            info = {"images": len(files), "mean_kb": float(np.mean(sizes) / 1e3), "cores": os.cpu_count(),
                    "workers": args.workers, "check": args.check, "rounds": args.rounds,
                    "date": time.strftime("%Y-%m-%d", time.gmtime())}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**info, **result, "breakdown_cpu_ms_per_image": stages}, indent=2) + "\n")
            print(f"results written to {args.json}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    with needs_install('sample'):
        main()
