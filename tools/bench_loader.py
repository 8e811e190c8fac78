#!/usr/bin/env python
"""DALI multi-crop loader vs the reference PIL/torchvision loader, side by side on the same shards.

    python tools/bench_loader.py SHARDSET [--rounds 3] [--batch-size 32] [--threads 2] [--n-local 10]
                                 [--steps 12] [--warmup 4] [--device cpu] [--json out.json]
    python tools/bench_loader.py shards/bench --make-sample 384   # first build a photo shard set

Rounds alternate DALI / reference so both see the same machine load; prints per-round images/s,
CPU ms per image (all threads and worker processes) and the 1-minute load average, the medians and
the ratios. DALI runs ``--interp`` (``data.interp``, default ``gaussian``); the reference always
runs the DINO recipe with PIL bicubic. The reference runs a torch DataLoader with as many
worker processes as DALI has threads. ``--make-sample N`` writes N ~400x350 JPEG photo crops
(scikit-image / scikit-learn sample photos, via tests/conftest.py helpers) as a shard set first.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require('nvidia.dali', 'torchvision', extras='sample')

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_sample_shardset(out: Path, n: int, per_shard: int = 48, size=(400, 350)) -> Path:
    """``n`` labelled JPEG photo crops of about ``size`` (4 classes) sharded by ``dino-pipe shard`` into ``out``."""
    import tempfile

    from dino_pipe.sample_data import write_photo_tree
    from dino_pipe.shards.writer import ShardOptions, shard_tree

    with tempfile.TemporaryDirectory() as tmp:
        tree = write_photo_tree(Path(tmp) / "tree", n, classes=4, seed=3, size=size)
        shard_tree(tree / "train", out, ShardOptions(layout="imagefolder", shard_samples=per_shard), force=True,
                   progress=False)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shardset", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-local", type=int, default=10)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--interp", default="gaussian", choices=["gaussian", "cubic", "linear"],
                    help="DALI crop resize filter (data.interp, default gaussian); the reference always runs the "
                         "DINO recipe (PIL bicubic)")
    ap.add_argument("--make-sample", type=int, default=0, metavar="N", help="first write N photo crops as a shard set")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from dino_pipe.config import DataConfig
    from dino_pipe.data.bench import bench_loader
    from dino_pipe.errors import UserError

    if args.make_sample:
        make_sample_shardset(args.shardset, args.make_sample)
        print(f"wrote {args.make_sample} photo crops to {args.shardset}")
    if args.rounds < 1:  # --rounds 0: only build the shard set
        return None
    common = dict(batch_size=args.batch_size, threads=args.threads, n_local=args.n_local, steps=args.steps,
                  warmup=args.warmup)
    rows = {"dali": [], "reference": []}
    try:
        for r in range(args.rounds):
            for name in ("dali", "reference"):
                cfg = DataConfig(interp=args.interp if name == "dali" else "cubic")
                res = bench_loader(
                    args.shardset, cfg, loader=name, device=args.device if name == "dali" else "cpu", **common
                )
                res["load_avg_1min"] = round(os.getloadavg()[0], 2)
                rows[name].append(res)
                print(f"round {r + 1} {name:9s} {res['images_per_s']:8.1f} img/s  {res['views_per_s']:9.1f} views/s  "
                      f"{res['cpu_ms_per_image']:6.2f} CPU ms/img  (load avg {res['load_avg_1min']:.2f})")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    med = {k: statistics.median(x["images_per_s"] for x in v) for k, v in rows.items()}
    result = {
        "shardset": str(args.shardset),
        "device": args.device,
        "dali_interp": args.interp,
        **common,
        "views_per_image": 2 + args.n_local,
        "rounds": args.rounds,
        "dali_images_per_s": [x["images_per_s"] for x in rows["dali"]],
        "reference_images_per_s": [x["images_per_s"] for x in rows["reference"]],
        "dali_cpu_ms_per_image": [x["cpu_ms_per_image"] for x in rows["dali"]],
        "reference_cpu_ms_per_image": [x["cpu_ms_per_image"] for x in rows["reference"]],
        "load_avg_1min": [x["load_avg_1min"] for k in ("dali", "reference") for x in rows[k]],
        "dali_median_images_per_s": med["dali"],
        "reference_median_images_per_s": med["reference"],
        "dali_median_views_per_s": statistics.median(x["views_per_s"] for x in rows["dali"]),
        "ratio": round(med["dali"] / med["reference"], 3),
        "dali_median_cpu_ms_per_image": statistics.median(x["cpu_ms_per_image"] for x in rows["dali"]),
        "reference_median_cpu_ms_per_image": statistics.median(x["cpu_ms_per_image"] for x in rows["reference"]),
    }
    result["cpu_ratio"] = round(result["reference_median_cpu_ms_per_image"] / result["dali_median_cpu_ms_per_image"], 3)
    print(f"median  dali {med['dali']:.1f} img/s  reference {med['reference']:.1f} img/s  ratio {result['ratio']:.2f}x")
    print(f"median  CPU per image: dali {result['dali_median_cpu_ms_per_image']:.2f} ms  reference "
          f"{result['reference_median_cpu_ms_per_image']:.2f} ms  ratio {result['cpu_ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    with needs_install('sample'):
        main()
