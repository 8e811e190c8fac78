"""A JPEG cut inside its scan with an end-of-image marker appended: structurally whole, and libjpeg
(PIL, DALI) only warns and fills the rest with gray. ``shard --check decode`` skips it and
``verify`` names it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import photo_crops, write_minimal_shardset
from PIL import Image
from typer.testing import CliRunner

from dino_pipe.cli import app
from dino_pipe.shards.image import CUT_SHORT, UnreadableImage, jpeg_problem, prepare_image, scan_cut_short
from dino_pipe.shards.jpeg import inspect_jpeg
from dino_pipe.shards.verify import verify_shardset

runner = CliRunner()


def encode(a, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def cut(data: bytes, fraction: float) -> bytes:
    """Cut ``data`` at ``fraction`` of its length (inside the scan) and append an end-of-image marker."""
    return data[: int(len(data) * fraction)] + b"\xff\xd9"


@pytest.fixture(scope="module")
def crops(photos):
    return photo_crops(photos, 4, seed=3, size=(256, 192))


def test_the_structure_and_pil_cannot_see_the_cut(crops):
    """Why a decoder-based check is needed: the structure is whole and PIL's full decode succeeds."""
    bad = cut(encode(crops[0]), 0.5)
    inspect_jpeg(bad)
    Image.open(io.BytesIO(bad)).load()
    assert prepare_image(bad).data == bad  # the default structural check keeps it


@pytest.mark.parametrize("kw", [{}, {"progressive": True}, {"subsampling": 0}], ids=["baseline", "progressive", "444"])
def test_cut_scans_are_found_and_whole_files_pass(crops, kw):
    for a in crops[:2]:
        data = encode(a, **kw)
        assert not scan_cut_short(data, inspect_jpeg(data), force=True)
        assert jpeg_problem(data) is None
        for fraction in (0.2, 0.5, 0.9):
            bad = cut(data, fraction)
            assert scan_cut_short(bad, inspect_jpeg(bad)), (kw, fraction)
            assert jpeg_problem(bad) == CUT_SHORT


def test_grayscale_and_hard_truncation(crops):
    gray = encode(crops[1][..., 0])
    assert jpeg_problem(gray) is None
    assert jpeg_problem(cut(gray, 0.5)) == CUT_SHORT
    with pytest.raises(UnreadableImage, match="cut short"):  # converted JPEGs are checked too
        prepare_image(cut(gray, 0.5), check="decode")
    assert "truncated" in jpeg_problem(encode(crops[0])[:-500])
    assert jpeg_problem(b"not a jpeg") is None  # other formats are left to DALI


def test_shard_check_decode_skips_it_with_the_reason(crops, tmp_path):
    src = tmp_path / "src"
    for i, a in enumerate(crops):
        (src / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"c{i % 2}" / f"{i}.jpg").write_bytes(encode(a))
    (src / "c1" / "cut.jpg").write_bytes(cut(encode(crops[0]), 0.5))
    out = tmp_path / "out"
    r = runner.invoke(app, ["shard", str(src), "--out", str(out), "--check", "decode", "-q"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 4
    assert [(s["path"], s["reason"]) for s in manifest["skipped"]] == [("c1/cut.jpg", CUT_SHORT)]


def test_verify_names_the_sample(crops, tmp_path):
    samples = [(f"s{i}", encode(a), i % 2) for i, a in enumerate(crops)]
    samples[2] = ("s2", cut(samples[2][1], 0.5), 0)
    out = write_minimal_shardset(tmp_path / "set", samples, per_shard=2, classes=["a", "b"])
    report = verify_shardset(out, workers=2, progress=False)
    problems = report["sets"][0]["problems"]
    assert not report["ok"]
    assert problems == [{"shard": "shard-000001.tar", "sample": "s2", "problem": CUT_SHORT}]
    r = runner.invoke(app, ["verify", str(out), "-q"])
    bad = [line for line in r.output.splitlines() if line.startswith("bad:")]
    assert r.exit_code == 1 and len(bad) == 1 and "shard-000001.tar: sample s2:" in bad[0] and "cut short" in bad[0]


def test_whole_sets_still_pass(crops, tmp_path):
    out = write_minimal_shardset(tmp_path / "set", [(f"s{i}", encode(a), 0) for i, a in enumerate(crops)], 2, ["a"])
    assert verify_shardset(Path(out), workers=1, progress=False)["ok"]
