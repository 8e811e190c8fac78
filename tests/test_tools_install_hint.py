"""Every tools/ script that needs dino-pipe ends in one line saying what to run when it is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = sorted(p for p in (ROOT / "tools").glob("*.py") if p.name != "install_hint.py")

# A sitecustomize that makes chosen top-level modules unimportable, as in a Python without the install.
BLOCKER = """
import importlib.abc, os, sys
_blocked = set(os.environ["BLOCK_MODULES"].split(","))
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def test_every_tool_that_imports_dino_pipe_is_guarded():
    using = [p for p in TOOLS if "dino_pipe" in p.read_text()]
    assert len(using) >= 5
    for p in using:
        text = p.read_text()
        assert "from install_hint import" in text and "require(" in text and "needs_install(" in text, p.name


@pytest.mark.parametrize("blocked", ["dino_pipe", "torch"])
@pytest.mark.parametrize("tool", [p.name for p in TOOLS if "dino_pipe" in p.read_text()])
def test_missing_install_gives_one_line_and_no_traceback(tmp_path, tool, blocked):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "BLOCK_MODULES": blocked}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / tool), "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: tools/{tool}: Python module '{blocked}' is not installed")
    assert "tools/setup.sh" in lines[0] and "source .venv/bin/activate" in lines[0]


def test_installed_tool_still_runs(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "make_sample_data.py"), "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "sample dataset" in r.stdout
