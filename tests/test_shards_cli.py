"""The ``shard`` and ``verify`` commands: output, JSON results, and one-line errors (no traceback)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import photo_crops
from PIL import Image
from typer.testing import CliRunner

from dino_pipe.cli import app

runner = CliRunner()


@pytest.fixture()
def tree(tmp_path, photos) -> Path:
    for i, a in enumerate(photo_crops(photos, 12, seed=12, size=(48, 40))):
        p = tmp_path / "src" / f"c{i % 2}" / f"{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(p, quality=90)
    (tmp_path / "src" / "c0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return tmp_path / "src"


def one_error_line(result) -> str:
    text = result.output.strip()
    assert result.exit_code != 0 and "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def test_shard_then_verify(tree, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(
        app, ["shard", str(tree), "--out", str(out), "--shard-samples", "5", "-q", "--json", str(tmp_path / "r.json")]
    )
    assert r.exit_code == 0, r.output
    assert "skipped 1 unreadable file" in r.output and "(class folders, " in r.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["sets"][0]["num_samples"] == 12 and result["sets"][0]["shards"] == 3
    r = runner.invoke(app, ["verify", str(out), "-q", "--json", str(tmp_path / "v.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "v.json").read_text())["ok"] is True

    with open(out / "shard-000001.tar", "r+b") as f:  # damage a header: the tar no longer parses
        f.seek(10)
        f.write(b"XX")
    r = runner.invoke(app, ["verify", str(out), "-q"])
    assert r.exit_code == 1 and "bad:" in r.output and "shard-000001.tar" in r.output and "Traceback" not in r.output


def test_error_paths_print_one_line(tree, tmp_path):
    assert "does not exist" in one_error_line(runner.invoke(app, ["shard", str(tmp_path / "nope")]))
    (tmp_path / "empty").mkdir()
    assert "no images found" in one_error_line(runner.invoke(app, ["shard", str(tmp_path / "empty")]))
    (tmp_path / "onlytext").mkdir()
    (tmp_path / "onlytext" / "a.txt").write_text("x")
    assert "no images found" in one_error_line(
        runner.invoke(app, ["shard", str(tmp_path / "onlytext"), "--layout", "unlabeled"])
    )
    (tmp_path / "afile").write_text("x")
    line = one_error_line(runner.invoke(app, ["shard", str(tree), "--out", str(tmp_path / "afile" / "sub")]))
    assert "cannot write to output folder" in line
    assert "--quality" in one_error_line(runner.invoke(app, ["shard", str(tree), "--quality", "0"]))
    assert "--layout" in one_error_line(runner.invoke(app, ["shard", str(tree), "--layout", "coco"]))

    out = tmp_path / "out"
    assert runner.invoke(app, ["shard", str(tree), "--out", str(out), "-q"]).exit_code == 0
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    line = one_error_line(runner.invoke(app, ["shard", str(tree), "--out", str(out), "--seed", "3", "-q"]))
    assert "different shard set" in line and "--force" in line
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()} == before
    assert runner.invoke(app, ["shard", str(tree), "--out", str(out), "--seed", "3", "--force", "-q"]).exit_code == 0

    imagenet = tmp_path / "imagenet"
    (imagenet / "train" / "c0").mkdir(parents=True)
    (imagenet / "val").mkdir()
    data = next(tree.rglob("*.jpg")).read_bytes()
    (imagenet / "train" / "c0" / "a.jpg").write_bytes(data)
    (imagenet / "val" / "b.jpg").write_bytes(data)
    assert "no class folders" in one_error_line(runner.invoke(app, ["shard", str(imagenet)]))
    (imagenet / "val" / "b.jpg").unlink()
    (imagenet / "val" / "c9").mkdir()
    (imagenet / "val" / "c9" / "b.jpg").write_bytes(data)
    assert "'c9' is not a class of the train split" in one_error_line(runner.invoke(app, ["shard", str(imagenet)]))

    assert "does not exist" in one_error_line(runner.invoke(app, ["verify", str(tmp_path / "nope")]))
    assert "holds no shard set" in one_error_line(runner.invoke(app, ["verify", str(tmp_path / "empty")]))


def test_real_process_exit_code_and_stderr(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dino_pipe", "shard", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"error: source folder {tmp_path / 'missing'} does not exist"]
