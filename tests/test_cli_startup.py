"""Errors arrive first: the CLI checks paths and settings before importing torch or DALI."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# runs the CLI in a fresh interpreter and reports, at exit, which heavy packages were imported
PROBE = """
import atexit, sys
def _report():
    heavy = sorted(m for m in ("torch", "nvidia.dali", "timm", "torchvision") if m in sys.modules)
    sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
atexit.register(_report)
from dino_pipe.cli import main
sys.argv = ["dino-pipe", *sys.argv[1:]]
main()
"""


def run_cli(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """(the finished process, its CPU seconds: user + system)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, cpu


def test_a_mistyped_data_path_is_one_line_before_torch_is_imported(tmp_path):
    proc, cpu = run_cli("train", "--config", str(ROOT / "configs" / "cpu_small.yaml"), "--data", "shards/mnsit",
                        "--out", "runs/x", "--gpus", "0", cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("HEAVY=")]
    assert proc.returncode != 0 and lines == ["error: --data shards/mnsit: no such shard set (make one with "
                                              "`dino-pipe shard`)"], proc.stderr
    assert "HEAVY=\n" in proc.stderr, f"imported before the error: {proc.stderr}"
    assert cpu < 2.0, f"{cpu:.2f} CPU seconds before a one-line error"  # measured: about 0.3 s
    assert not (tmp_path / "runs").exists()


def test_a_bad_setting_is_refused_before_torch_is_imported(tmp_path):
    (tmp_path / "set").mkdir()
    proc, _ = run_cli("train", "--data", "set", "--out", "run", "--gpus", "0", "optim.base_lr=fast", cwd=tmp_path)
    assert proc.returncode != 0 and "optim.base_lr" in proc.stderr and "HEAVY=\n" in proc.stderr, proc.stderr
    proc, _ = run_cli("train", "--data", "set", "--out", "run", "--gpus", "0", cwd=tmp_path)
    assert proc.returncode != 0 and "not a shard set" in proc.stderr and "HEAVY=\n" in proc.stderr, proc.stderr


def test_evaluations_check_their_inputs_before_torch_is_imported(tmp_path, tiny_shardset):
    from PIL import Image

    (tmp_path / "img.png").write_bytes(b"")
    Image.new("RGB", (40, 40), (90, 30, 200)).save(tmp_path / "digit.png")
    (tmp_path / "attn").mkdir()
    (tmp_path / "attn" / "digit-attention.png").write_bytes(b"the user's own picture")  # refused: no --force
    cases = [
        (["eval", "knn", "--checkpoint", "runs/nope", "--train", str(tiny_shardset), "--val", str(tiny_shardset)],
         "runs/nope: no such checkpoint file or run directory"),
        (["eval", "knn", "--checkpoint", "img.png", "--train", str(tiny_shardset), "--val", "shards/nope"],
         "shards/nope"),
        (["viz", "attention", "--checkpoint", "img.png", "--out", "attn", "nope.jpg"], "nope.jpg: image not found"),
        (["export", "--checkpoint", "runs/nope", "--out", "b.safetensors"], "runs/nope: no such checkpoint"),
        (["viz", "attention", "--checkpoint", "img.png", "--out", "attn", "digit.png"], "digit-attention.png"),
    ]
    for args, message in cases:
        proc, _ = run_cli(*args, cwd=tmp_path)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert "HEAVY=\n" in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
