"""Broken inputs give one clear UserError line (never a DALI stack dump)."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from conftest import photo_crops, write_minimal_shardset
from PIL import Image
from typer.testing import CliRunner

from dino_pipe.cli import app
from dino_pipe.config import DataConfig
from dino_pipe.data.loader import EvalLoader, ViewLoader
from dino_pipe.errors import UserError

CFG = DataConfig(global_size=32, local_size=16, n_local=1, batch_size=4)


def _one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 400, msg
    for w in words:
        assert w in msg, msg
    return msg


def _jpeg(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def test_missing_folder(tmp_path):
    with pytest.raises(UserError) as e:
        ViewLoader(tmp_path / "nope", CFG)
    _one_line(e, "nope")


def test_folder_without_manifest(tmp_path):
    (tmp_path / "set").mkdir()
    with pytest.raises(UserError) as e:
        EvalLoader(tmp_path / "set", CFG)
    _one_line(e, "manifest.json")


def test_empty_set(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"format": "dino-pipe-shards", "version": 1, "num_samples": 0,
                                                    "classes": [], "labeled": False, "shards": []}))
    with pytest.raises(UserError) as e:
        ViewLoader(root, CFG)
    _one_line(e, str(root))


def test_truncated_tar(tmp_path, tiny_shardset):
    root = tmp_path / "trunc"
    shutil.copytree(tiny_shardset, root)
    tar = root / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    with pytest.raises(UserError) as e:
        ViewLoader(root, CFG)
    _one_line(e, "shard-000001.tar", "bytes")


def test_missing_tar(tmp_path, tiny_shardset):
    root = tmp_path / "gone"
    shutil.copytree(tiny_shardset, root)
    (root / "shard-000002.tar").unlink()
    with pytest.raises(UserError) as e:
        EvalLoader(root, CFG)
    _one_line(e, "shard-000002.tar", "missing")


def test_garbage_jpeg_is_translated_from_dali(tmp_path, photos):
    """A sample whose .jpg is not a JPEG passes the manifest checks; DALI fails at run time."""
    crops = photo_crops(photos, 8, seed=2, size=(48, 40))
    samples = [(f"g{i:03d}", _jpeg(a), 0) for i, a in enumerate(crops)]
    samples[3] = ("g003", b"\xff\xd8 this is not really a jpeg" * 4, 0)
    root = write_minimal_shardset(tmp_path / "garbage", samples, 8, ["a"])
    loader = ViewLoader(root, CFG)
    with pytest.raises(UserError) as e:
        for _ in loader:
            pass
    _one_line(e, str(root), "DALI could not read it", "verify")
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "loader",
            str(root),
            "--steps",
            "1",
            "--warmup",
            "0",
            "--batch-size",
            "8",
            "--n-local",
            "0",
            "--global-size",
            "32",
        ],
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_batch_larger_than_rank_share(tiny_shardset):
    with pytest.raises(UserError) as e:
        ViewLoader(tiny_shardset, CFG, batch_size=64, world_size=2)
    _one_line(e, "batch_size")


def test_half_output_needs_gpu(tiny_shardset):
    with pytest.raises(UserError) as e:
        ViewLoader(tiny_shardset, DataConfig(output_dtype="float16"))
    _one_line(e, "data.output_dtype")


def test_cli_missing_shardset_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["bench", "loader", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
