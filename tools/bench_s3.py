#!/usr/bin/env python
"""Loader images/s from an S3-compatible server vs from local disk, same shards, side by side.

    python tools/bench_s3.py [--images 384] [--per-shard 48] [--rounds 3] [--steps 8] [--warmup 2]
                             [--batch-size 32] [--threads 2] [--n-local 2] [--endpoint URL --bucket B]

Without ``--endpoint`` a local moto server is started on 127.0.0.1 (``DINO_PIPE_MOTO_SERVER`` or
``moto_server`` on PATH; ``tools/test.sh`` installs one in ``.venv-moto``) and its request log is
counted. A photo shard set (tools/bench_loader.py ``make_sample_shardset``) is written locally and
uploaded. Each round, alternating so both see the same machine load:

* ``local``: ``bench_loader`` on the local folder;
* ``s3 cold``: a fresh cache: fetch the whole set (one GET per tar and per .idx, in parallel), then
  the same loader: time to fetch (MB/s) and the loader's images/s;
* ``s3 warm``: the cache already holds the set (one GET for the manifest), then the loader;

and once, ``dali s3``: DALI's own ``s3://`` webdataset reader on the same set (requests per shard
from the server log). Prints medians, the warm/local ratio and the 1-minute load average.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require('boto3', extras='dev')

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    import shutil
    import socket

    exe = (
        os.environ.get("DINO_PIPE_MOTO_SERVER")
        or shutil.which("moto_server")
        or str(ROOT / ".venv-moto/bin/moto_server")
    )
    if not os.access(exe, os.X_OK):
        sys.exit("bench_s3: no moto_server (set DINO_PIPE_MOTO_SERVER, or give --endpoint of a running S3 server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("bench_s3: moto_server did not start")


def count_requests(log: Path, start: int) -> dict:
    """HTTP requests the server logged after byte ``start`` of its log, by method."""
    import re

    text = log.read_text(errors="replace")[start:] if log.exists() else ""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # the server colours some status lines
    out = {}
    for m in ("GET", "HEAD", "PUT", "POST", "DELETE"):
        if text.count(f'"{m} '):
            out[m] = text.count(f'"{m} ')
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--per-shard", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-local", type=int, default=2)
    ap.add_argument(
        "--dali-s3-steps", type=int, default=2, help="timed batches of DALI's own s3 reader (slow); 0 = skip"
    )
    ap.add_argument("--endpoint", default=None, help="an S3 server already running (else a local moto server)")
    ap.add_argument("--bucket", default="dino-pipe-bench")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from bench_loader import make_sample_shardset

    from dino_pipe.config import DataConfig
    from dino_pipe.data.bench import bench_loader
    from dino_pipe.data.shardset import ShardSet, open_shardset
    from dino_pipe.shards.fetch import fetch_shardset
    from dino_pipe.storage.cache import CacheSettings
    from dino_pipe.storage.store import open_store

    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    log = work / "server.log"
    proc = None
    if args.endpoint:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint
    else:
        proc, endpoint = start_moto(log)
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        import boto3

        client = boto3.client("s3")
        try:
            client.create_bucket(Bucket=args.bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        local = make_sample_shardset(work / "local", args.images, args.per_shard)
        store = open_store(f"s3://{args.bucket}/bench/set")
        url = store.url
        for p in sorted(local.iterdir()):
            store.put_file(p.name, p)
        n_shards = len(open_shardset(local).tars)
        mb = sum(p.stat().st_size for p in local.glob("*.tar")) / 1e6
        cfg = DataConfig()
        kw = dict(
            batch_size=args.batch_size, threads=args.threads, n_local=args.n_local, steps=args.steps, warmup=args.warmup
        )
        rows: dict[str, list[float]] = {
            "local": [],
            "s3 cold": [],
            "s3 warm": [],
            "fetch cold s": [],
            "fetch warm s": [],
        }
        per_shard = None
        for r in range(args.rounds):
            rows["local"].append(bench_loader(local, cfg, **kw)["images_per_s"])
            settings = CacheSettings.resolve(str(work / f"cache-{r}"))
            mark = log.stat().st_size if log.exists() else 0
            t0 = time.perf_counter()
            folder = fetch_shardset(str(url), settings)
            rows["fetch cold s"].append(time.perf_counter() - t0)
            if proc is not None:
                time.sleep(0.3)
                reqs = count_requests(log, mark)
                per_shard = {m: round(n / n_shards, 2) for m, n in reqs.items() if n}
            rows["s3 cold"].append(bench_loader(folder, cfg, **kw)["images_per_s"])
            t0 = time.perf_counter()
            folder = fetch_shardset(str(url), settings)
            rows["fetch warm s"].append(time.perf_counter() - t0)
            rows["s3 warm"].append(bench_loader(folder, cfg, **kw)["images_per_s"])
        dali = None
        if args.dali_s3_steps:
            s = open_shardset(local)
            remote = ShardSet(
                root=local,
                tars=tuple(store.describe(Path(t).name) for t in s.tars),
                indexes=tuple(store.describe(Path(i).name) for i in s.indexes),
                shard_samples=s.shard_samples,
                num_samples=s.num_samples,
                classes=s.classes,
                labeled=s.labeled,
            )
            mark = log.stat().st_size if log.exists() else 0
            t0 = time.perf_counter()
            res = bench_loader(remote, cfg, **{**kw, "steps": args.dali_s3_steps, "warmup": 1})
            wall = time.perf_counter() - t0
            time.sleep(0.3)
            reqs = count_requests(log, mark) if proc is not None else {}
            images = (args.dali_s3_steps + 1) * args.batch_size
            dali = {
                "images_per_s": res["images_per_s"],
                "requests": reqs,
                "images_timed": images,
                "seconds": round(wall, 1),
                "requests_per_shard": {m: round(n / n_shards, 1) for m, n in reqs.items()},
            }
        med = {k: statistics.median(v) for k, v in rows.items()}
        result = {
            "shards": n_shards,
            "images": args.images,
            "MB": round(mb, 1),
            "rounds": rows,
            "median": med,
            "warm_over_local": round(med["s3 warm"] / med["local"], 3),
            "cold_over_local": round(med["s3 cold"] / med["local"], 3),
            "fetch_MB_per_s": round(mb / med["fetch cold s"], 1),
            "requests_per_shard_cold_fetch": per_shard,
            "dali_s3_reader": dali,
            "loadavg_1min": os.getloadavg()[0],
            "settings": kw,
        }
        print(
            f"set: {args.images} images, {n_shards} shards, {mb:.1f} MB; load average {os.getloadavg()[0]:.2f} (1 min)"
        )
        print(f"{'round':>6} {'local':>9} {'s3 cold':>9} {'s3 warm':>9} {'fetch cold s':>13} {'fetch warm s':>13}")
        for r in range(args.rounds):
            print(f"{r:>6} {rows['local'][r]:>9.1f} {rows['s3 cold'][r]:>9.1f} {rows['s3 warm'][r]:>9.1f} "
                  f"{rows['fetch cold s'][r]:>13.3f} {rows['fetch warm s'][r]:>13.3f}")
        print(
            f"median {med['local']:>9.1f} {med['s3 cold']:>9.1f} {med['s3 warm']:>9.1f} "
            f"{med['fetch cold s']:>13.3f} {med['fetch warm s']:>13.3f}"
        )
        print(f"ratio s3 warm / local = {result['warm_over_local']:.3f}; cold fetch {result['fetch_MB_per_s']} MB/s; "
              f"requests per shard (cold fetch, incl. manifest): {per_shard}")
        if dali:
            print(
                f"DALI's own s3:// reader: {dali['images_per_s']:.1f} images/s; requests per shard "
                f"{dali['requests_per_shard']} (its shuffle buffer reads ahead over the set; {dali['seconds']} s wall)"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    with needs_install('dev'):
        main()
