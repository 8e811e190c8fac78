#!/usr/bin/env python
"""How many torch threads should CPU training use? Training rate by thread setting, idle and under load.

    python tools/bench_threads.py [--data SHARDSET] [--config configs/cpu_small.yaml] [--steps 20]
                                  [--rounds 3] [--variants one,all,all_passive,auto] [--loads idle,busy]
                                  [--json benchmarks/threads-cpu_small.json]

Each run is a fresh `dino-pipe train --gpus 0` process (``train.max_steps=--steps``, a metrics record every
5 steps, no checkpoints but the last, no online k-NN) on the MNIST sample (written and sharded into
``--work`` unless ``--data`` names a shard set). Its rate is the images/s between its first and its last
metrics record, so start-up (imports, the DALI pipeline, the first steps) is left out. Variants:

  one          train.cpu_threads=1
  all          train.cpu_threads=<all cores>: torch's own default, and dino-pipe's before the automatic count
  all_passive  all cores with OMP_WAIT_POLICY=PASSIVE (waiting OpenMP threads sleep instead of spinning)
  auto         train.cpu_threads=0: the automatic count (cores minus the loader's threads; see dino_pipe/cpus.py)

Loads: ``idle`` runs beside whatever else the machine is doing (the load average is printed);
``busy`` adds one busy-loop process per core for the run's duration (another job on the machine).
Rounds alternate the variants side by side, so each round's variants see the same conditions; the table
gives medians and each variant's ratio to ``all`` under the same load.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require("numpy", "mlxtend", extras="sample")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("one", "all", "all_passive", "auto")


def _spin() -> None:  # pragma: no cover - runs in the load processes
    while True:
        pass


def sample_shardset(work: Path) -> Path:
    """The MNIST sample as shard sets under ``work`` (reused when there)."""
    shards = work / "shards" / "mnist"
    if not (shards / "train" / "manifest.json").is_file():
        from dino_pipe.sample_data import write_mnist
        from dino_pipe.shards.options import ShardOptions
        from dino_pipe.shards.writer import shard_tree

        write_mnist(work / "data" / "mnist")
        shard_tree(work / "data" / "mnist", shards, ShardOptions(), progress=False)
    return shards / "train"


def variant_settings(name: str, cores: int) -> tuple[list[str], dict[str, str]]:
    """(config overrides, environment changes) of a variant."""
    if name == "one":
        return ["train.cpu_threads=1"], {}
    if name == "all":
        return [f"train.cpu_threads={cores}"], {}
    if name == "all_passive":
        return [f"train.cpu_threads={cores}"], {"OMP_WAIT_POLICY": "PASSIVE"}
    if name == "auto":
        return ["train.cpu_threads=0"], {}
    raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def run_once(args, variant: str, cores: int, out: Path) -> dict:
    """One training run; its steady rate (images/s between the first and last metrics record) and CPU time."""
    overrides, env_changes = variant_settings(variant, cores)
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(PYTHONPATH=str(ROOT), **env_changes)
    cmd = [_sys.executable, "-m", "dino_pipe", "train", "--config", str(args.config), "--data", str(args.data),
           "--out", str(out), "--gpus", "0", "-q", f"train.max_steps={args.steps}", "train.log_every_steps=5",
           "train.checkpoint_every_steps=0", "eval.online_knn_auto=false", *overrides]
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        raise SystemExit(f"{variant}: dino-pipe train failed:\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    first, last = records[0], records[-1]
    batch = _read_batch(out)
    rate = (last["step"] - first["step"]) * batch / max(last["time"] - first["time"], 1e-9)
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"variant": variant, "images_per_s": round(rate, 2), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "steps": last["step"], "load_avg_1min": round(os.getloadavg()[0], 2)}


def _read_batch(run: Path) -> int:
    import yaml

    return int(yaml.safe_load((run / "config.yaml").read_text())["data"]["batch_size"])


def measure(args, cores: int) -> list[dict]:
    """Every round: for each load, start it, run every variant once (side by side), stop it."""
    rows = []
    for r in range(args.rounds):
        for load in args.loads:
            spinners = [mp.Process(target=_spin, daemon=True) for _ in range(cores)] if load == "busy" else []
            for p in spinners:
                p.start()
            try:
                for v in args.variants:
                    row = {"round": r + 1, "load": load, **run_once(args, v, cores, args.work / "run")}
                    rows.append(row)
                    print(f"round {r + 1} {load:5s} {v:12s} {row['images_per_s']:7.1f} img/s  "
                          f"wall {row['wall_s']:6.1f} s  cpu {row['cpu_s']:6.1f} s  "
                          f"load avg {row['load_avg_1min']:.1f}", flush=True)
            finally:
                for p in spinners:
                    p.terminate()
                    p.join()
    return rows


def summarize(rows: list[dict], variants: list[str], loads: list[str]) -> dict:
    """Median images/s per (load, variant) and each variant's ratio to ``all`` under the same load."""
    med = {load: {v: statistics.median(x["images_per_s"] for x in rows if x["load"] == load and x["variant"] == v)
                  for v in variants} for load in loads}
    ratio = {load: {v: round(med[load][v] / med[load]["all"], 2) if med[load].get("all") else None for v in variants}
             for load in loads}
    return {"median_images_per_s": med, "ratio_to_all": ratio}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="a shard set (default: the MNIST sample under --work)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "cpu_small.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--loads", default="idle,busy")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_threads"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    args.loads = [x for x in args.loads.split(",") if x]
    if "all" not in args.variants:
        args.variants.insert(0, "all")  # the baseline of the ratios
    args.work.mkdir(parents=True, exist_ok=True)
    args.data = args.data or sample_shardset(args.work)

    from dino_pipe.config import load_config
    from dino_pipe.cpus import available_cores, training_threads

    cores = available_cores()
    cfg = load_config(args.config)
    auto = training_threads(0, cfg.data.threads)
    print(f"{cores} cores; {args.config.name}: data.threads={cfg.data.threads}, automatic torch threads = {auto}; "
          f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    rows = measure(args, cores)
    summary = summarize(rows, args.variants, args.loads)
    print(f"\nmedian images/s of {args.rounds} rounds, {args.steps} steps each (ratio to all {cores} cores):")
    print(f"{'variant':14s}" + "".join(f"{load:>22s}" for load in args.loads))
    for v in args.variants:
        cells = "".join(f"{summary['median_images_per_s'][x][v]:13.1f} ({summary['ratio_to_all'][x][v]:4.2f}x)"
                        for x in args.loads)
        print(f"{v:14s}{cells}")
    config = args.config.resolve()
    shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    result = {"cores": cores, "config": str(shown), "data": str(args.data), "steps": args.steps,
              "rounds": args.rounds, "auto_threads": auto, "data_threads": cfg.data.threads, **summary, "runs": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.json}")
    return result


if __name__ == "__main__":
    with needs_install("sample"):
        main()
