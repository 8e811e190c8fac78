#!/usr/bin/env python
"""Benchmark ``dino-pipe shard`` against a straightforward ``webdataset.ShardWriter`` loop.

Builds (or takes, ``--src``) an ImageNet-like tree ``train/<class>/<n>.JPEG`` of ~400x350 JPEG
crops of the photos scikit-image / scikit-learn ship (30-60 KB each), then, for several rounds,
shards it with

* **baseline**: one process; for each file: read, full PIL decode (``Image.open(...).convert("RGB")``)
  as validation, ``ShardWriter.write({"__key__", "jpg", "cls"})`` (1000 samples / 128 MB shards);
* **dino-pipe**: ``shard_tree`` with all cores (same limits), ``--check structure`` (default) or
  ``--check decode`` (also a 1/8-scale decode of every kept JPEG).

and prints images/s per round, the medians and their ratio. The machine's load average is printed
with every round (other processes share the CPU and lower the parallel speed-up).

    python tools/bench_shard.py [--images 4000] [--rounds 3] [--workers 0] [--check structure] [--json out.json]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require('numpy', 'PIL', 'webdataset', 'skimage', 'sklearn', extras='sample')

import argparse
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dino_pipe.sample_data import write_photo_tree  # noqa: E402


def list_tree(src: Path) -> list[tuple[Path, int]]:
    train = src / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    files = []
    for label, c in enumerate(classes):
        files += [(p, label) for p in sorted((train / c).iterdir()) if p.is_file()]
    return files


def run_baseline(src: Path, out: Path, seed: int = 0) -> int:
    """The straightforward loop: read, full decode, ShardWriter.write; returns images written."""
    import webdataset as wds

    files = list_tree(src)
    random.Random(seed).shuffle(files)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=1000, maxsize=128e6, verbose=0) as sink:
        for path, label in files:
            data = path.read_bytes()
            try:
                Image.open(io.BytesIO(data)).convert("RGB")
            except Exception:
                continue
            sink.write({"__key__": f"{path.parent.name}__{path.stem}", "jpg": data, "cls": label})
            written += 1
    return written


def run_dino_pipe(src: Path, out: Path, workers: int, check: str = "structure") -> int:
    from dino_pipe.shards.writer import ShardOptions, shard_tree

    result = shard_tree(src, out, ShardOptions(workers=workers, check=check), progress=False)
    return sum(s["num_samples"] for s in result["sets"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, help="an existing ImageNet-like tree (default: build one)")
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="dino-pipe workers (0 = all cores)")
    ap.add_argument("--check", default="structure", choices=["structure", "decode"], help="dino-pipe --check mode")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_shard_"))
    try:
        src = args.src
        if src is None:
            t = time.perf_counter()
            src = write_photo_tree(tmp / "src", args.images)
            print(f"built {args.images} images in {time.perf_counter() - t:.1f}s under {src}")
        files = list_tree(src)
        sizes = [p.stat().st_size for p, _ in files]
        for p, _ in files:  # warm the page cache so both sides read from memory
            p.read_bytes()
        print(
            f"{len(files)} images, {np.mean(sizes) / 1e3:.1f} KB mean "
            f"({min(sizes) / 1e3:.0f}-{max(sizes) / 1e3:.0f} KB), "
            f"{os.cpu_count()} cores"
        )
        rates: dict[str, list[float]] = {"baseline": [], "dino_pipe": []}
        loads = []
        for r in range(args.rounds):
            order = ["baseline", "dino_pipe"] if r % 2 == 0 else ["dino_pipe", "baseline"]
            for name in order:
                out = tmp / f"out_{name}_{r}"
                load = os.getloadavg()[0]
                t = time.perf_counter()
                n = run_baseline(src, out) if name == "baseline" else run_dino_pipe(src, out, args.workers, args.check)
                dt = time.perf_counter() - t
                rates[name].append(n / dt)
                loads.append(load)
                print(
                    f"round {r}: {name:9s} {n} images in {dt:6.2f}s = {n / dt:8.1f} img/s   "
                    f"(load avg before: {load:.2f})"
                )
                shutil.rmtree(out)
        med = {k: statistics.median(v) for k, v in rates.items()}
        ratio = med["dino_pipe"] / med["baseline"]
        print(
            f"median baseline {med['baseline']:.1f} img/s | dino-pipe (--check {args.check}) "
            f"{med['dino_pipe']:.1f} img/s | ratio {ratio:.2f}x "
            f"| load avg {min(loads):.2f}-{max(loads):.2f}"
        )
        if args.json:
            result = {
                "images": len(files),
                "mean_kb": float(np.mean(sizes) / 1e3),
                "cores": os.cpu_count(),
                "workers": args.workers,
                "check": args.check,
                "rates": rates,
                "median": med,
                "ratio": ratio,
                "load_avg": loads,
            }
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            print(f"results written to {args.json}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    with needs_install('sample'):
        main()
