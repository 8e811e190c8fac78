#!/usr/bin/env python
"""Peak memory of the chunked k-NN vs the size of the features themselves, at growing scale.

Each size runs in a fresh subprocess (so torch's caches from a previous size do not count):
it builds synthetic L2-normalized clustered features directly in the storage dtype (float16 by
default: an ImageNet-1k bank is 1.28M x 384 x 2 B = 0.98 GB), resets the kernel's peak-RSS
counter (``echo 5 > /proc/self/clear_refs``), runs :func:`dino_pipe.eval.knn.knn_classify` with
the default chunks (1024 queries x 65536 bank rows) and k in {10, 20, 100, 200}, and reads the peak
(``VmHWM``) from ``/proc/self/status``. "extra" = peak RSS - RSS just before the k-NN (which
already holds the process, torch and the features): the memory the k-NN itself needs.

    .venv/bin/python tools/bench_knn_memory.py                        # default ladder, table
    .venv/bin/python tools/bench_knn_memory.py --sizes 10000:10000 1280000:2000 --json out.json

Run time grows with n_train x n_queries (a 1.28M bank against 2k queries is ~2 TFLOP); the default
ladder keeps the whole run to a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require()

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SIZES = ["10000:50000", "100000:10000", "400000:5000", "1280000:2000"]


def _status(key: str) -> int:
    """A ``/proc/self/status`` entry in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(
    n_train: int, n_query: int, dim: int, dtype_name: str, classes: int, query_chunk: int, bank_chunk: int
) -> dict:
    import torch

    from dino_pipe.eval.knn import knn_classify

    torch.set_num_threads(max(1, torch.get_num_threads()))
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=g)

    def make(n: int):
        feats = torch.empty(n, dim, dtype=dtype)
        labels = torch.randint(0, classes, (n,), generator=g)
        for s in range(0, n, 65536):  # build in blocks: no full-size float32 temporary
            y = labels[s : s + 65536]
            x = centres[y] + 3.0 * torch.randn(y.numel(), dim, generator=g)
            feats[s : s + 65536] = torch.nn.functional.normalize(x, dim=1).to(dtype)
        return feats, labels

    rss_start = _status("VmRSS")
    bank, bank_labels = make(n_train)
    queries, query_labels = make(n_query)
    feature_bytes = sum(t.numel() * t.element_size() for t in (bank, bank_labels, queries, query_labels))
    rss_before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    scores = knn_classify(queries, query_labels, bank, bank_labels, num_classes=classes, ks=(10, 20, 100, 200),
                          query_chunk=query_chunk, bank_chunk=bank_chunk)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    return {"n_train": n_train, "n_query": n_query, "dim": dim, "dtype": dtype_name,
            "feature_bytes": feature_bytes, "rss_start": rss_start, "rss_before_knn": rss_before,
            "peak_rss": peak, "extra_bytes": peak - rss_before, "seconds": round(seconds, 2),
            "query_chunk": query_chunk, "bank_chunk": bank_chunk,
            "top1_k20": scores.accuracy()[20]["top1"], "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="n_train:n_query pairs")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--query-chunk", type=int, default=1024)
    ap.add_argument("--bank-chunk", type=int, default=65536)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--child", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.dim, args.dtype, args.classes,
                               args.query_chunk, args.bank_chunk)))
        return

    gib = 1024 ** 3
    rows = []
    print(f"{'n_train':>9} {'n_query':>8} {'features':>10} {'rss before':>11} {'peak rss':>10} {'extra':>9} "
          f"{'extra/feat':>10} {'seconds':>8}")
    for size in args.sizes:
        n_train, n_query = (int(v) for v in size.split(":"))
        cmd = [sys.executable, __file__, "--child", str(n_train), str(n_query), "--dim", str(args.dim),
               "--dtype", args.dtype, "--classes", str(args.classes), "--query-chunk", str(args.query_chunk),
               "--bank-chunk", str(args.bank_chunk)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(
                f"{n_train:>9} {n_query:>8}  failed: "
                f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}"
            )
            break
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{n_train:>9} {n_query:>8} {row['feature_bytes'] / gib:>9.3f}G {row['rss_before_knn'] / gib:>10.3f}G "
              f"{row['peak_rss'] / gib:>9.3f}G {row['extra_bytes'] / gib:>8.3f}G "
              f"{row['extra_bytes'] / row['feature_bytes']:>10.2f} {row['seconds']:>8.1f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"dim": args.dim, "dtype": args.dtype, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    with needs_install(''):
        main()
