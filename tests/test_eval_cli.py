"""The eval package's commands: one error line (no traceback) for bad inputs; the happy paths print and write JSON."""

from __future__ import annotations

import json

import pytest
import torch
from eval_helpers import write_tiny_checkpoint
from PIL import Image
from typer.testing import CliRunner

from dino_pipe.cli import app
from dino_pipe.eval.features import save_features

runner = CliRunner()


def _run(args):
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output, res.exception


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("run"))


def _one_error_line(code, output, exc):
    assert code == 2, output
    assert "Traceback" not in output and (exc is None or isinstance(exc, SystemExit))
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "knn", "--checkpoint", "{missing}", "--train", "{shards}", "--val", "{shards}", "--gpus", "0"],
        [
            "eval",
            "linear",
            "--checkpoint",
            "{missing}",
            "--train",
            "{shards}",
            "--val",
            "{shards}",
            "--out",
            "{tmp}/lin",
            "--gpus",
            "0",
        ],
        ["viz", "attention", "{tmp}/a.jpg", "--checkpoint", "{missing}", "--out", "{tmp}/viz", "--device", "cpu"],
        ["export", "--checkpoint", "{missing}", "--out", "{tmp}/b.safetensors"],
    ],
)
def test_missing_checkpoint_is_one_error_line(command, tmp_path, tiny_shardset):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg")
    args = [a.format(missing=tmp_path / "nope.pt", shards=tiny_shardset, tmp=tmp_path) for a in command]
    line = _one_error_line(*_run(args))
    assert "nope.pt" in line


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "knn", "--checkpoint", "{ckpt}", "--train", "{missing}", "--val", "{shards}", "--gpus", "0"],
        ["eval", "knn", "--checkpoint", "{ckpt}", "--train", "{shards}", "--val", "{missing}", "--gpus", "0"],
        [
            "eval",
            "linear",
            "--checkpoint",
            "{ckpt}",
            "--train",
            "{missing}",
            "--val",
            "{shards}",
            "--out",
            "{tmp}/lin",
            "--gpus",
            "0",
        ],
    ],
)
def test_missing_shardset_is_one_error_line(command, tmp_path, tiny_shardset, ckpt):
    args = [a.format(missing=tmp_path / "no_shards", shards=tiny_shardset, tmp=tmp_path, ckpt=ckpt) for a in command]
    line = _one_error_line(*_run(args))
    assert "no_shards" in line


def test_knn_from_saved_features_prints_a_table_and_writes_json(tmp_path):
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 40), ("val", 10)):
        feats = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1).half()
        save_features(tmp_path / "f" / f"{split}.safetensors", feats, torch.arange(n) % 3,
                      {"num_classes": 3, "classes": ["a", "b", "c"], "checkpoint": {"arch": "x", "which": "teacher"}})
    code, output, _ = _run(["eval", "knn", "--load-features", tmp_path / "f", "--k", 5, "--k", 20, "--k", 50,
                            "--json", tmp_path / "r.json"])
    assert code == 0, output
    assert "top-1" in output and "50 (-> 40)" in output
    # k beyond the bank is capped, k beyond the average class size (40 / 3) is flagged: said in the table and JSON
    assert (
        "k = 50: k capped to the bank size 40" in output
        and "k = 20: k exceeds the bank's average class size (13)" in output
    )
    assert "k = 5:" not in output
    result = json.loads((tmp_path / "r.json").read_text())
    assert [r["k"] for r in result["results"]] == [5, 20, 50] and result["knn"]["temperature"] == 0.07
    assert "note" not in result["results"][0] and "capped" in result["results"][2]["note"]
    assert "other classes" in result["results"][1]["note"]


def test_export_command(tmp_path, ckpt):
    code, output, _ = _run(["export", "--checkpoint", ckpt, "--out", tmp_path / "bb.safetensors"])
    assert code == 0, output
    assert (tmp_path / "bb.safetensors").is_file() and json.loads((tmp_path / "bb.json").read_text())["arch"]
