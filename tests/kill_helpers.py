"""Helper for the kill -9 resume tests: start a training command and SIGKILL it once it has logged a step."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from dino_pipe.atomic import read_jsonl


def kill_after_step(cmd: list[str], env: dict, run_dir: Path, at_step: int, timeout: float = 240) -> None:
    """Run ``cmd`` and kill it with SIGKILL as soon as ``run_dir/metrics.jsonl`` shows step ``at_step`` or later;
    fails when the run ends on its own before that."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = Path(run_dir) / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        steps = [r["step"] for r in read_jsonl(metrics)] if metrics.exists() else []
        if steps and steps[-1] >= at_step:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
