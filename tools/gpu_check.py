#!/usr/bin/env python
"""Every GPU check and benchmark of dino-pipe in one run (``tools/gpu_check.sh`` calls this).

Stages, in order of value; each has its own time limit (and the whole run a budget), writes
``OUT/<stage>.json`` the moment it ends (``status`` ok | failed | timeout | skipped, seconds,
the figures it measured) and its log ``OUT/<stage>.log``, so a run cut off at any point still
returns everything measured so far:

1. ``gpu_tests``: the GPU-marked tests (mixed decode, GPU ops, sync-free steps, CUDA k-NN);
2. ``data``: a labelled JPEG shard set (train + val photo crops from the photos scikit-image and
   scikit-learn ship) made with ``dino-pipe shard`` and checked with ``dino-pipe verify``; the
   stages that read it are skipped when it fails;
3. ``bench_loader``: ``tools/bench_loader.py``, DALI vs the reference PIL loader with all cores;
4. ``bench_train``: ``dino-pipe bench train`` (real shards vs synthetic: images/s, data wait);
5. ``bench_train_reference``: ``tools/bench_train.py`` (the plain-PyTorch reference step);
6. ``train_resume``: an uninterrupted run and, side by side, the same run killed with SIGKILL
   after a checkpoint and resumed; their final weights are compared (equal, or max |diff|);
7. ``knn``: ``dino-pipe eval knn`` on the uninterrupted run's teacher.

At the end ``OUT/summary.json`` (every stage) and ``OUT/summary.md`` (one screen) are written and
printed. ``--device cpu`` runs the CPU analogue of every stage at small sizes (what the test suite
rehearses); ``--quick`` shrinks it further.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require()

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DP = [PY, "-m", "dino_pipe"]


# ------------------------------------------------------------------------------------------------
# sizes per mode
# ------------------------------------------------------------------------------------------------

TINY_MODEL = ["model.arch=vit_tiny_patch16_224", "model.arch_kwargs={img_size: 32, patch_size: 8, depth: 2}",
              "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32"]


def plan(device: str, quick: bool, cores: int) -> dict:
    """Every size and limit the stages use, for the GPU run or its CPU rehearsal."""
    if device == "cuda":
        return {
            "budget_s": 350, "classes": 4, "train_images": 4096, "val_images": 512, "image_size": (400, 350),
            "limits": {"gpu_tests": 70, "data": 40, "bench_loader": 40, "bench_train": 45,
                       "bench_train_reference": 35, "train_resume": 105, "knn": 35},
            "tests": ["-m", "gpu", "tests"],
            "loader": ["--device", "cuda", "--batch-size", "128", "--threads", str(cores), "--n-local", "10",
                       "--steps", "12", "--warmup", "3", "--rounds", "2"],
            "bench_train": ["--batch-size", "64", "--steps", "25", "--warmup", "8", "--gpus", "1"],
            "reference": ["--batch-size", "64", "--steps", "15", "--warmup", "5", "--ours", "bf16"],
            "train": ["--config", "configs/vit_small_imagenet.yaml", "--gpus", "1", "train.max_steps=200",
                      "train.epochs=4", "train.checkpoint_every_steps=50", "data.batch_size=64",
                      "optim.warmup_epochs=1", "train.log_every_steps=10"],
            "kill_after_step": 110,
            "knn": ["--gpus", "1", "--k", "10", "--k", "20"],
        }
    small = ["--global-size", "32", "--local-size", "16", "--n-local", "2"]
    return {
        "budget_s": 900, "classes": 4, "train_images": 48 if quick else 96, "val_images": 16 if quick else 32,
        "image_size": (72, 64),
        "limits": {"gpu_tests": 120, "data": 90, "bench_loader": 120, "bench_train": 120,
                   "bench_train_reference": 120, "train_resume": 240, "knn": 90},
        "tests": (["tests/test_gpu_graphs.py::test_the_old_verify_graph_is_refused_at_definition"] if quick else
                  ["tests/test_gpu_graphs.py", "tests/test_train_precision.py", "-m", "not slow"]),
        "loader": ["--device", "cpu", "--batch-size", "8", "--threads", "1", "--n-local", "2", "--steps", "1",
                   "--warmup", "1", "--rounds", "1"],
        "bench_train": ["--batch-size", "8", *small, "--steps", "2", "--warmup", "1", "--gpus", "0",
                        "--arch", "vit_tiny_patch16_224", *TINY_MODEL[1:], "train.cpu_threads=1"],
        "reference": ["--cpu", "--arch", "vit_tiny_patch16_224", "--arch-kwargs", '{"patch_size": 8, "depth": 2}',
                      "--batch-size", "8", *small, "--out-dim", "256", "--steps", "2", "--warmup", "1"],
        "train": ["--gpus", "0", *TINY_MODEL, "data.batch_size=8", "data.global_size=32", "data.local_size=16",
                  "data.n_local=2", "data.threads=1", "train.epochs=2", "train.checkpoint_every_steps=2",
                  "train.log_every_steps=2", "train.collapse_check_every_steps=2", "optim.warmup_epochs=1",
                  "model.drop_path=0.1", "train.cpu_threads=1"],
        "kill_after_step": 3,
        "knn": ["--gpus", "0", "--resize", "36", "--crop", "32", "--k", "5", "--k", "10", "--batch-size", "16"],
    }


# ------------------------------------------------------------------------------------------------
# running commands with a limit
# ------------------------------------------------------------------------------------------------


class Timeout(Exception):
    pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_cmd(cmd: list[str], log, deadline: float) -> int:
    """Run ``cmd`` in its own process group, output appended to ``log``; kill the group at ``deadline``."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise Timeout(f"killed at the time limit while running: {' '.join(cmd[:6])}") from None
    except BaseException:
        _kill_group(proc)
        raise


def must(cmd: list[str], log, deadline: float) -> None:
    code = run_cmd(cmd, log, deadline)
    if code != 0:
        raise RuntimeError(f"exit code {code}: {' '.join(cmd[:6])}")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except Exception:
        return {}


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts as dotted keys (bench train's ``shards.images_per_s`` ...); lists kept as they are."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ------------------------------------------------------------------------------------------------
# the stages
# ------------------------------------------------------------------------------------------------


def _write_chunk(job: tuple) -> int:
    import numpy as np
    from PIL import Image

    from dino_pipe.sample_data import photo_crops, shipped_photos

    root, start, n, classes, seed, size = job
    rng = np.random.default_rng(seed + start)
    crops = photo_crops(list(shipped_photos().values()), n, seed=seed + start, size=size, crop=(0.5, 0.95),
                        jitter=(0.9, 1.1))
    for j, a in enumerate(crops):
        i = start + j
        folder = Path(root) / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / f"img_{i:05d}.JPEG", quality=int(rng.integers(88, 97)))  # like real sets
    return n


def make_data(tree: Path, train: int, val: int, classes: int, size: tuple[int, int], workers: int = 1) -> None:
    """``tree/{train,val}/class_XX/img_NNNNN.JPEG``: crops of the photos scikit-image and scikit-learn ship
    (no download), image ``i`` in class ``i % classes`` and from photo ``i % photos``; written in parallel."""
    import shutil
    from concurrent.futures import ProcessPoolExecutor

    from dino_pipe.sample_data import shipped_photos

    if tree.exists():
        shutil.rmtree(tree)
    chunk = 8 * classes * len(shipped_photos())  # a multiple of both: photo and class follow the global index
    jobs = [(str(tree / split), start, min(chunk, n - start), classes, seed, size)
            for split, n, seed in (("train", train, 3), ("val", val, 1_000_003)) for start in range(0, n, chunk)]
    with ProcessPoolExecutor(max(1, min(workers, len(jobs)))) as pool:
        assert sum(pool.map(_write_chunk, jobs)) == train + val


def junit_counts(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    bad = [f"{tc.get('classname', '')}::{tc.get('name')}" for s in suites for tc in s.iter("testcase")
           if tc.find("failure") is not None or tc.find("error") is not None]
    c["not_passed"] = bad[:10]
    return c


def compare_checkpoints(a: Path, b: Path) -> dict:
    """Student, teacher and centre of two checkpoints: bitwise equal, or the largest |difference|."""
    import torch

    from dino_pipe.train import load_checkpoint

    ca, cb = load_checkpoint(a), load_checkpoint(b)
    out: dict = {"steps": [int(ca["step"]), int(cb["step"])]}
    worst, equal = 0.0, ca["step"] == cb["step"]
    for part in ("student", "teacher"):
        sa, sb = ca[part], cb[part]
        if sa.keys() != sb.keys():
            return {**out, "equal": False, "error": f"{part} keys differ"}
        for k in sa:
            x, y = sa[k], sb[k]
            if not torch.equal(x, y):
                equal = False
                if x.is_floating_point():
                    worst = max(worst, float((x.double() - y.double()).abs().max()))
    ka, kb = ca["objective"]["dino.center"], cb["objective"]["dino.center"]
    centre = float((ka.double() - kb.double()).abs().max())
    out.update(equal=bool(equal and centre == 0.0), max_abs_diff=worst, center_max_abs_diff=centre)
    return out


class Check:
    def __init__(self, args):
        self.device = args.device
        self.quick = args.quick
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.p = plan(self.device, self.quick, self.cores)
        if args.budget:
            self.p["budget_s"] = args.budget
        self.only = set(args.stages.split(",")) if args.stages else None
        self.t0 = time.monotonic()
        self.results: dict[str, dict] = {}
        self.shards = self.work / "shards"
        self.run_a, self.run_b = self.work / "run-straight", self.work / "run-killed"

    # -- bookkeeping ----------------------------------------------------------------------------
    def left(self) -> float:
        return self.p["budget_s"] - (time.monotonic() - self.t0)

    def stage(self, name: str, body, needs: tuple[str, ...] = ()) -> None:
        if self.only and name not in self.only:
            return
        limit = min(self.p["limits"][name], self.left())
        rec: dict = {"stage": name, "limit_s": round(limit, 1), "figures": {}}
        blocked = [n for n in needs if self.results.get(n, {}).get("status", "ok" if self.only else None) != "ok"]
        t = time.monotonic()
        if blocked:
            rec.update(status="skipped", reason=f"needs {', '.join(blocked)}")
        elif self.left() < 5:
            rec.update(status="skipped", reason="the run's time budget is spent")
        else:
            with open(self.out / f"{name}.log", "w") as log:
                try:
                    rec["figures"] = body(log, time.monotonic() + limit) or {}
                    rec["status"] = "ok"
                except Timeout as e:
                    rec.update(status="timeout", reason=str(e))
                except Exception as e:  # a failed stage never stops the later ones
                    rec.update(status="failed", reason=f"{type(e).__name__}: {e}"[:400])
            if rec["status"] != "ok":
                tail = (self.out / f"{name}.log").read_text(errors="replace").splitlines()[-8:]
                rec["log_tail"] = tail
        rec["seconds"] = round(time.monotonic() - t, 1)
        self.results[name] = rec
        (self.out / f"{name}.json").write_text(json.dumps(rec, indent=2) + "\n")
        print(
            f"== {name}: {rec['status']} ({rec['seconds']} s)"
            + (f" - {rec.get('reason')}" if rec.get("reason") else ""),
            flush=True,
        )

    # -- stages ---------------------------------------------------------------------------------
    def gpu_tests(self, log, deadline):
        xml = self.out / "gpu_tests.xml"
        timeout = ["--timeout", "60"] if _has("pytest_timeout") else []  # one hung test cannot eat the stage
        code = run_cmd([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *timeout, f"--junitxml={xml}",
                        *self.p["tests"]], log, deadline)
        counts = junit_counts(xml) if xml.exists() else {}
        if code not in (0, 5) or counts.get("failures") or counts.get("errors"):
            raise RuntimeError(f"pytest exit code {code}: {counts}")
        return counts

    def data(self, log, deadline):
        tree = self.work / "tree"
        w, h = self.p["image_size"]
        must([PY, str(Path(__file__).resolve()), "make-data", str(tree), "--train", str(self.p["train_images"]),
              "--val", str(self.p["val_images"]), "--classes", str(self.p["classes"]), "--size", str(w), str(h),
              "--workers", str(self.cores)],
             log, deadline)
        shard_json, verify_json = self.out / "data_shard_raw.json", self.out / "data_verify_raw.json"
        must([*DP, "shard", str(tree), "--out", str(self.shards), "--force", "--quiet", "--shard-samples", "256",
              "--json", str(shard_json)], log, deadline)
        must([*DP, "verify", str(self.shards), "--quiet", "--json", str(verify_json),
              "--device", self.device], log, deadline)
        figures = {"train_images": self.p["train_images"], "val_images": self.p["val_images"],
                   "image_size": f"{w}x{h}", "classes": self.p["classes"]}
        v = read_json(verify_json)
        figures["verify_ok"] = bool(v.get("ok"))
        figures["verify_problems"] = len(v.get("problems", []))
        if not v.get("ok"):
            raise RuntimeError(f"dino-pipe verify found problems: {v.get('problems', [])[:3]}")
        return figures

    def bench_loader(self, log, deadline):
        raw = self.out / "bench_loader_raw.json"
        must(
            [PY, "tools/bench_loader.py", str(self.shards / "train"), *self.p["loader"], "--json", str(raw)],
            log,
            deadline,
        )
        d = read_json(raw)
        keys = ("dali_median_images_per_s", "reference_median_images_per_s", "ratio", "dali_median_views_per_s",
                "dali_median_cpu_ms_per_image", "cpu_ratio", "batch_size", "threads", "views_per_image")
        return {k: d.get(k) for k in keys}

    def bench_train(self, log, deadline):
        raw = self.out / "bench_train_raw.json"
        must([*DP, "bench", "train", "--data", str(self.shards / "train"), "--json", str(raw), *self.p["bench_train"]],
             log, deadline)
        return flatten(read_json(raw))

    def bench_train_reference(self, log, deadline):
        raw = self.out / "bench_train_reference_raw.json"
        must([PY, "tools/bench_train.py", *self.p["reference"], "--json", str(raw)], log, deadline)
        return flatten(read_json(raw))

    def train_resume(self, log, deadline):
        import shutil

        for d in (self.run_a, self.run_b):
            shutil.rmtree(d, ignore_errors=True)

        def cmd(run: Path) -> list[str]:
            return [*DP, "train", "--data", str(self.shards / "train"), "--out", str(run), "--quiet", *self.p["train"]]

        log.write(f"$ {' '.join(cmd(self.run_a))} &   (uninterrupted, side by side)\n")
        log.flush()
        straight = subprocess.Popen(
            cmd(self.run_a), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            killed_at = self._run_and_kill(cmd(self.run_b), log, deadline)
            must(cmd(self.run_b), log, deadline)  # the same command resumes from the newest checkpoint
            code = straight.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise Timeout("the uninterrupted run did not finish in time") from None
        finally:
            if straight.poll() is None:
                _kill_group(straight)
        if code != 0:
            raise RuntimeError(f"the uninterrupted run failed (exit code {code})")
        summary_a = read_json(self.run_a / "summary.json")
        summary_b = read_json(self.run_b / "summary.json")
        figures = {"killed_at_step": killed_at, "resumed_from": summary_b.get("resumed_from"),
                   **{f"straight.{k}": summary_a.get(k) for k in ("steps", "final_loss", "images_per_s",
                                                                  "data_wait_pct", "precision", "wall_s")},
                   "resumed.final_loss": summary_b.get("final_loss")}
        figures.update({f"compare.{k}": v for k, v in compare_checkpoints(self.run_a, self.run_b).items()})
        return figures

    def _run_and_kill(self, cmd: list[str], log, deadline: float) -> int | None:
        """Start ``cmd``, SIGKILL it once its metrics show step >= kill_after_step; the step seen, or None."""
        from dino_pipe.atomic import read_jsonl

        log.write(f"$ {' '.join(cmd)}   (killed with SIGKILL after step {self.p['kill_after_step']})\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        metrics = self.run_b / "metrics.jsonl"
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise Timeout("the run to be killed did not reach its kill step in time")
                steps = [r.get("step", 0) for r in read_jsonl(metrics)] if metrics.exists() else []
                if steps and steps[-1] >= self.p["kill_after_step"]:
                    _kill_group(proc)
                    log.write(f"killed at step {steps[-1]}\n")
                    return int(steps[-1])
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"the run to be killed failed (exit code {proc.returncode})")
        return None  # it finished first: the resume below then only reloads the last checkpoint

    def knn(self, log, deadline):
        if not list((self.run_a / "checkpoints").glob("step-*.pt")):
            raise RuntimeError(f"no checkpoint in {self.run_a} (the train_resume stage wrote none)")
        raw = self.out / "knn_raw.json"
        must([*DP, "eval", "knn", "--checkpoint", str(self.run_a), "--train", str(self.shards / "train"),
              "--val", str(self.shards / "val"), "--json", str(raw), *self.p["knn"]], log, deadline)
        d = read_json(raw)
        figures = {f"k{r['k']}.{m}": r[m] for r in d.get("results", []) for m in ("top1", "top5") if m in r}
        figures.update(
            {k: v for k, v in flatten(d).items() if k.startswith("seconds") or k in ("device", "world_size")}
        )
        figures["checkpoint_step"] = d.get("checkpoint", {}).get("step")
        return figures

    # -- all ------------------------------------------------------------------------------------
    def machine(self) -> dict:
        info = {"python": platform.python_version(), "cores": self.cores, "device": self.device,
                "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            import torch

            info.update(torch=torch.__version__, cuda=torch.version.cuda,
                        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
        except Exception as e:
            info["torch"] = f"unavailable: {e}"
        try:
            import nvidia.dali as dali

            info["dali"] = dali.__version__
        except Exception as e:
            info["dali"] = f"unavailable: {e}"
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except Exception:
            pass
        (self.out / "machine.json").write_text(json.dumps(info, indent=2) + "\n")
        return info

    def run(self) -> int:
        info = self.machine()
        print(f"== machine: {json.dumps(info)}", flush=True)
        self.stage("gpu_tests", self.gpu_tests)
        self.stage("data", self.data)
        self.stage("bench_loader", self.bench_loader, needs=("data",))
        self.stage("bench_train", self.bench_train, needs=("data",))
        self.stage("bench_train_reference", self.bench_train_reference)
        self.stage("train_resume", self.train_resume, needs=("data",))
        self.stage("knn", self.knn, needs=("data",))  # the uninterrupted run's checkpoint, even if the resume failed
        total = round(time.monotonic() - self.t0, 1)
        summary = {"machine": info, "seconds": total, "budget_s": self.p["budget_s"], "stages": self.results}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        text = summary_text(summary)
        (self.out / "summary.md").write_text(text)
        print(text, end="")
        return 0 if all(r["status"] == "ok" for r in self.results.values()) else 1


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# what the one-screen summary shows of each stage (every figure is in summary.json)
KEY_FIGURES = {
    "gpu_tests": ("passed", "failures", "errors", "skipped", "not_passed"),
    "data": ("train_images", "val_images", "image_size", "verify_ok", "verify_problems"),
    "bench_loader": ("dali_median_images_per_s", "reference_median_images_per_s", "ratio", "dali_median_views_per_s"),
    "bench_train": ("shards.images_per_s", "synthetic.images_per_s", "shards_vs_synthetic", "shards.data_wait_pct",
                    "shards.peak_memory_gib"),
    "bench_train_reference": None,  # every images_per_s / speedup figure
    "train_resume": ("straight.steps", "killed_at_step", "compare.equal", "compare.max_abs_diff",
                     "straight.images_per_s", "straight.data_wait_pct", "straight.final_loss", "resumed.final_loss"),
    "knn": None,
}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v[:4]) + (", …" if len(v) > 4 else "") + "]"
    return str(v)


def summary_text(summary: dict) -> str:
    m = summary["machine"]
    lines = [f"dino-pipe GPU check: {m.get('gpu') or m.get('device')} | torch {m.get('torch')} cuda {m.get('cuda')} | "
             f"dali {m.get('dali')} | {m.get('cores')} cores | {summary['seconds']} s of {summary['budget_s']} s", "",
             "| stage | status | s | figures |", "|---|---|---|---|"]
    for name, r in summary["stages"].items():
        figs = r.get("figures", {})
        keys = KEY_FIGURES.get(name)
        if keys is None:
            keys = [k for k in figs if any(w in k for w in ("images_per_s", "speedup", "top1"))][:8]
        shown = "; ".join(f"{k} {_fmt(figs[k])}" for k in keys if k in figs and figs[k] is not None)
        if r["status"] != "ok":
            shown = (r.get("reason", "") + ("; " + shown if shown else ""))[:300]
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', 0)} | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "make-data":
        ap = argparse.ArgumentParser(prog="gpu_check.py make-data")
        ap.add_argument("tree", type=Path)
        ap.add_argument("--train", type=int, required=True)
        ap.add_argument("--val", type=int, required=True)
        ap.add_argument("--classes", type=int, default=4)
        ap.add_argument("--size", type=int, nargs=2, default=(400, 350))
        ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
        a = ap.parse_args(argv[1:])
        make_data(a.tree, a.train, a.val, a.classes, tuple(a.size), workers=a.workers)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    ap.add_argument("--quick", action="store_true", help="CPU rehearsal at the smallest sizes")
    ap.add_argument("--out", default=None, help="results folder (default: $OUT, else benchmarks/gpu-check-<date>)")
    ap.add_argument(
        "--work", default=None, help="scratch folder for data and runs (default: $TMPDIR/dino-pipe-gpu-check)"
    )
    ap.add_argument("--stages", default=None, help="comma-separated stages to run (default: all, in order)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 350 on a GPU)")
    args = ap.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out = args.out or os.environ.get("OUT") or str(ROOT / "benchmarks" / f"gpu-check-{time.strftime('%Y%m%d')}")
    args.work = args.work or str(Path(os.environ.get("TMPDIR", "/tmp")) / "dino-pipe-gpu-check")
    path = os.environ.get("PYTHONPATH", "")
    if str(ROOT) not in path.split(os.pathsep):  # every child imports this checkout's dino_pipe
        os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return Check(args).run()


if __name__ == "__main__":
    with needs_install():
        raise SystemExit(main())
