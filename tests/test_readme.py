"""The README's command blocks work as written.

Rule: a fenced ``bash`` block that follows the line ``<!-- readme-test: run -->`` is *runnable*:
it must run as written, in order with the other runnable blocks, from the clone after
``tools/demo.sh``. Blocks without the marker (ImageNet-sized examples, launchers, other machines)
are illustrations and are not run.

* quick (default): the runnable blocks are found and cover the whole line; every ``dino-pipe``
  command in them names a real command and only its real options; the files they name exist;
  the quick start is exactly ``tools/demo.sh`` and ``tools/test.sh``.
* slow: the runnable blocks run one after the other under ``bash -e`` in a copy of the clone whose
  ``.venv`` is a shim for this interpreter (as after the demo), with ``my_images/`` filled with
  colour photos in class folders (JPEG and PNG mixed), and with ``train.max_steps=3`` appended to
  every ``dino-pipe train`` (the one test-only change: small sizes, the README's text untouched).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = "<!-- readme-test: run -->"


def fenced_blocks(text: str) -> list[tuple[str, bool]]:
    """Every fenced ``bash`` block as (body, runnable), in README order."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            before = [ln.strip() for ln in lines[:i] if ln.strip()]
            blocks.append(("\n".join(lines[i + 1 : j]), bool(before) and before[-1] == MARKER))
            i = j
        i += 1
    return blocks


def runnable_blocks() -> list[str]:
    return [body for body, run in fenced_blocks(README.read_text()) if run]


def commands(block: str) -> list[list[str]]:
    """Shell commands of a block (continuation lines joined, comments dropped) as word lists."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def _click_command(words: list[str]):
    """The click command that ``dino-pipe WORDS...`` reaches, and the words after it."""
    import typer

    from dino_pipe.cli import app

    cmd = typer.main.get_command(app)
    rest = list(words)
    while rest and hasattr(cmd, "commands") and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]
    return cmd, rest


def test_quick_start_is_the_two_commands():
    text = README.read_text()
    section = text[text.index("## Quick start"):]
    first = fenced_blocks(section)[0][0]
    assert [w[0] for w in commands(first)] == ["tools/demo.sh", "tools/test.sh"]


def test_runnable_blocks_cover_the_line_and_use_real_commands_options_and_files():
    blocks = runnable_blocks()
    assert len(blocks) >= 2, "no runnable blocks found (marker: <!-- readme-test: run -->)"
    seen = set()
    for block in blocks:
        for words in commands(block):
            if words[0] == "dino-pipe":
                cmd, rest = _click_command(words[1:])
                assert not hasattr(cmd, "commands"), f"not a command: {' '.join(words)}"
                name = " ".join(words[1 : len(words) - len(rest)])
                seen.add(name)
                known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
                for w in rest:
                    if w.startswith("--"):
                        assert w.split("=")[0] in known, f"`dino-pipe {name}` has no option {w}"
                if "--config" in rest:
                    assert (ROOT / rest[rest.index("--config") + 1]).is_file()
            elif words[0] == "python":
                assert (ROOT / words[1]).is_file(), words
            elif words[0] == "source":
                assert words[1] == ".venv/bin/activate"
    for needed in ("shard", "verify", "train", "eval knn", "viz attention", "viz curves", "export"):
        assert needed in seen, f"the runnable README blocks never run `dino-pipe {needed}`"


def _copy_clone(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _venv_shim(clone: Path) -> None:
    """``.venv/bin/{activate,python,dino-pipe}`` running this interpreter on the copy's code."""
    bin_dir = clone / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\nexport PYTHONPATH="{clone}"\n')
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "dino-pipe").write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = train ]; then set -- "$@" $README_TEST_TRAIN_OVERRIDES; fi\n'
        f'exec "{sys.executable}" -m dino_pipe "$@"\n')
    for f in ("python", "dino-pipe"):
        (bin_dir / f).chmod(0o755)


def _my_images(root: Path) -> None:
    """A user's own folder: colour photo crops in 4 class folders, JPEG and PNG mixed, some large."""
    from PIL import Image

    from dino_pipe.sample_data import photo_crops, shipped_photos

    photos = list(shipped_photos().values())
    for split, n, seed in (("train", 48, 0), ("val", 12, 1)):
        for i, a in enumerate(photo_crops(photos, n, seed=seed, size=(700, 560) if seed == 0 else (160, 120))):
            folder = root / split / f"class_{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            if i % 2:
                Image.fromarray(a).save(folder / f"img_{i:03d}.png")
            else:
                Image.fromarray(a).save(folder / f"img_{i:03d}.jpg", quality=90)


@pytest.mark.slow
def test_runnable_blocks_run_in_order_from_a_clone(tmp_path):
    clone = tmp_path / "clone"
    _copy_clone(clone)
    _venv_shim(clone)
    _my_images(clone / "my_images")
    script = "set -euo pipefail\n" + "\n".join(runnable_blocks()) + "\n"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(README_TEST_TRAIN_OVERRIDES="train.max_steps=3", OMP_NUM_THREADS="1", DINO_PIPE_PROGRESS_EVERY="60")
    r = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the demo and your own images: k-NN, curves, the attention picture (both presets are ViTs) and export
    for run in ("runs/mnist", "runs/mine"):
        assert (clone / run / "knn.json").is_file() and (clone / run / "curves.png").is_file()
        assert list((clone / run / "attention").glob("*-attention.png"))
        assert (clone / run / "backbone.safetensors").is_file() and (clone / run / "backbone.json").is_file()
    assert "Traceback" not in r.stderr
