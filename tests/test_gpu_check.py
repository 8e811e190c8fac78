"""``tools/gpu_check.sh`` rehearsed on the CPU: stage limits, per-stage JSON written as each stage ends,
skipping what a failed stage blocks, the one-screen summary keeping nested figures, the resume
comparison, and (slow) the whole script with the CPU analogue of every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import gpu_check  # noqa: E402


def _check(tmp_path, **limits) -> gpu_check.Check:
    c = gpu_check.Check(Namespace(device="cpu", quick=True, out=str(tmp_path / "out"), work=str(tmp_path / "work"),
                                  budget=None, stages=None))
    c.p["limits"].update(limits)
    return c


def test_a_stage_past_its_limit_is_killed_and_the_next_ones_still_run(tmp_path):
    c = _check(tmp_path, data=3)
    marker = tmp_path / "child-still-running"

    child = tmp_path / "child.py"
    child.write_text(f"import time\ntime.sleep(8)\nopen({str(marker)!r}, 'w')\n")
    parent = tmp_path / "parent.py"
    parent.write_text(
        f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, {str(child)!r}])\ntime.sleep(60)\n"
    )

    def slow(log, deadline):  # a command whose own child would outlive a plain kill
        gpu_check.must([sys.executable, str(parent)], log, deadline)

    t = time.monotonic()
    c.stage("data", slow)
    assert time.monotonic() - t < 15
    rec = json.loads((tmp_path / "out" / "data.json").read_text())  # written when the stage ended
    assert rec["status"] == "timeout" and rec["limit_s"] == 3 and "$ " in "\n".join(rec["log_tail"])
    c.stage("bench_loader", lambda log, d: {"x": 1}, needs=("data",))
    c.stage("bench_train_reference", lambda log, d: {"reference (fp32)": {"images_per_s": 10.0}})
    assert json.loads((tmp_path / "out" / "bench_loader.json").read_text())["status"] == "skipped"
    assert c.results["bench_train_reference"]["status"] == "ok"
    c.stage("knn", lambda log, d: 1 / 0)
    assert c.results["knn"]["status"] == "failed" and "ZeroDivisionError" in c.results["knn"]["reason"]
    time.sleep(9)
    assert not marker.exists(), "the stage's process group was not killed"


def test_summary_keeps_nested_figures_and_fits_a_screen(tmp_path):
    bench = {"synthetic": {"images_per_s": 812.5, "median_step_s": 0.08}, "shards": {"images_per_s": 800.1,
             "data_wait_pct": 1.2, "peak_memory_gib": 11.0}, "shards_vs_synthetic": 0.985}
    stages = {
        "bench_train": {"status": "ok", "seconds": 40.0, "figures": gpu_check.flatten(bench)},
        "gpu_tests": {"status": "failed", "seconds": 3.0, "reason": "pytest exit code 1", "figures": {"passed": 3}},
    }
    text = gpu_check.summary_text({"machine": {"gpu": "H200", "torch": "2.11.0", "cuda": "13.0", "dali": "2.4.0",
                                               "cores": 16}, "seconds": 300.0, "budget_s": 345, "stages": stages})
    assert (
        "shards.images_per_s 800.1" in text
        and "shards.data_wait_pct 1.2" in text
        and "synthetic.images_per_s 812.5" in text
    )
    assert "pytest exit code 1" in text and "H200" in text
    assert len(text.splitlines()) < 25 and max(len(line) for line in text.splitlines()) < 400


def test_resume_comparison_says_equal_or_how_far(tmp_path):
    from dino_pipe.runs.checkpoint_file import save_checkpoint

    w = {"a": torch.ones(3), "n": torch.tensor(2)}
    base = {"config": {}, "step": 4, "center": torch.zeros(1, 3), "student": w, "teacher": dict(w)}
    save_checkpoint(tmp_path / "x", base, keep=1)
    save_checkpoint(tmp_path / "y", base, keep=1)
    save_checkpoint(
        tmp_path / "z", {**base, "teacher": {"a": torch.tensor([1.0, 1.5, 1.0]), "n": torch.tensor(2)}}, keep=1
    )
    same = gpu_check.compare_checkpoints(tmp_path / "x", tmp_path / "y")
    assert same["equal"] and same["max_abs_diff"] == 0.0 and same["steps"] == [4, 4]
    other = gpu_check.compare_checkpoints(tmp_path / "x", tmp_path / "z")
    assert not other["equal"] and other["max_abs_diff"] == 0.5


def _script(out: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--device", "cpu", "--quick",
                           "--work", str(work), *args], env=env, capture_output=True, text=True, timeout=900)


def test_script_writes_stage_json_and_summary_under_out(tmp_path):
    """The shell entry point end to end on the two cheapest stages (the rest: the slow rehearsal below)."""
    res = _script(tmp_path / "out", tmp_path / "work", "--stages", "gpu_tests,data")
    assert res.returncode == 0, res.stdout + res.stderr
    out = tmp_path / "out"
    assert json.loads((out / "gpu_tests.json").read_text())["figures"]["passed"] >= 1
    data = json.loads((out / "data.json").read_text())
    assert data["status"] == "ok" and data["figures"]["verify_ok"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) == {"gpu_tests", "data"} and (out / "summary.md").read_text() in res.stdout
    assert not (out / "work").exists()  # scratch data never lands in the results folder


@pytest.mark.slow
def test_cpu_rehearsal_of_every_stage(tmp_path):
    res = _script(tmp_path / "out", tmp_path / "work")
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert list(stages) == ["gpu_tests", "data", "bench_loader", "bench_train", "bench_train_reference",
                            "train_resume", "knn"]
    assert all(s["status"] == "ok" for s in stages.values()), res.stdout + res.stderr
    assert res.returncode == 0
    f = {name: s["figures"] for name, s in stages.items()}
    assert f["bench_loader"]["ratio"] > 0 and f["bench_train"]["shards.images_per_s"] > 0
    assert f["bench_train"]["shards.data_wait_pct"] >= 0
    assert f["train_resume"]["killed_at_step"] is not None and f["train_resume"]["resumed_from"]
    assert f["train_resume"]["compare.equal"] is True  # on the CPU the resumed run is bitwise the straight one
    assert 0 <= f["knn"]["k5.top1"] <= 100
    for name in stages:
        assert (out / f"{name}.json").is_file() and (out / f"{name}.log").is_file()


def test_gpu_plan_fits_six_minutes_and_its_settings_load():
    from dino_pipe.config import load_config

    p = gpu_check.plan("cuda", quick=False, cores=16)
    assert p["budget_s"] <= 350 and all(v <= 110 for v in p["limits"].values())
    config = p["train"][p["train"].index("--config") + 1]
    overrides = [a for a in p["train"] if "=" in a]
    cfg = load_config(ROOT / config, overrides)
    steps_per_epoch = p["train_images"] // cfg.data.batch_size
    assert cfg.train.epochs * steps_per_epoch >= cfg.train.max_steps >= 150  # a few hundred steps, all in the schedule
    assert cfg.train.checkpoint_every_steps < p["kill_after_step"] < cfg.train.max_steps
    assert p["kill_after_step"] % cfg.train.log_every_steps == 0
