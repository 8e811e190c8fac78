"""``dino-pipe verify``: passes good sets (ours and other tools'), names corrupt shards/samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import photo_crops
from PIL import Image

from dino_pipe.errors import UserError
from dino_pipe.shards.index import parse_index
from dino_pipe.shards.verify import verify_shardset
from dino_pipe.shards.writer import ShardOptions, shard_tree


@pytest.fixture(scope="module")
def written(tmp_path_factory, photos) -> Path:
    """An ImageNet-style tree sharded by dino-pipe: out/train (24 samples, 4 shards) and out/val (8)."""
    root = tmp_path_factory.mktemp("verify")
    for i, a in enumerate(photo_crops(photos, 32, seed=10, size=(64, 48))):
        split = "val" if i >= 24 else "train"
        path = root / "src" / split / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path, quality=90)
    shard_tree(root / "src", root / "out", ShardOptions(shard_samples=6, workers=1), progress=False)
    return root / "out"


def test_good_sets_pass_including_a_parent_folder(written):
    r = verify_shardset(written, workers=2, progress=False)
    assert r["ok"] and [Path(s["path"]).name for s in r["sets"]] == ["train", "val"]
    train = r["sets"][0]
    assert (train["shards"], train["samples"], train["decoded"], train["device"]) == (4, 24, 24, "cpu")
    assert verify_shardset(written / "val", progress=False)["ok"]


def test_sets_written_by_other_tools_pass(tiny_shardset, tmp_path):
    assert verify_shardset(tiny_shardset, progress=False)["ok"]  # webdataset TarWriter + wds2idx + manifest
    bare = tmp_path / "bare"
    shutil.copytree(tiny_shardset, bare)
    (bare / "manifest.json").unlink()
    r = verify_shardset(bare, progress=False)["sets"][0]
    assert r["ok"] and not r["manifest"] and r["samples"] == r["decoded"] == 96


def test_corrupt_image_and_missing_index_are_named(written, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(written / "train", bad)
    entry = parse_index((bad / "shard-000002.idx").read_text())[3]
    ext, offset, size, name = next(e for e in entry if e[0] == "jpg")
    with open(bad / "shard-000002.tar", "r+b") as f:  # flip the first 64 bytes of one image
        f.seek(offset)
        head = f.read(64)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in head))
    (bad / "shard-000001.idx").unlink()
    r = verify_shardset(bad, progress=False)
    s = r["sets"][0]
    assert not r["ok"]
    assert s["bad_shards"] == ["shard-000001.tar", "shard-000002.tar"]
    key = name.rsplit(".", 1)[0]
    assert s["bad_samples"] == [f"shard-000002.tar:{key}"]
    texts = {(p["shard"], p["sample"]): p["problem"] for p in s["problems"]}
    assert "sha256" in texts[("shard-000002.tar", None)]
    assert texts[("shard-000002.tar", key)].startswith(f"DALI cannot decode {name}")
    assert "index shard-000001.idx is missing" in texts[("shard-000001.tar", None)]
    assert s["decoded"] == 23  # the shard without its index was still decoded (with a rebuilt index)


def test_structural_problems_are_named(written, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(written / "train", bad)
    (bad / "shard-000000.tar").unlink()
    with open(bad / "shard-000003.tar", "r+b") as f:
        f.truncate(3000)
    idx = bad / "shard-000001.idx"
    idx.write_text(idx.read_text().replace(" 512 ", " 1024 ", 1))
    s = verify_shardset(bad, progress=False)["sets"][0]
    texts: dict[str, str] = {}
    for p in s["problems"]:
        texts[p["shard"]] = texts.get(p["shard"], "") + p["problem"] + " | "
    assert texts["shard-000000.tar"] == "tar file is missing | "
    assert "does not match the tar" in texts["shard-000001.tar"]
    assert "size 3000 bytes" in texts["shard-000003.tar"] and "not a readable tar" in texts["shard-000003.tar"]
    assert set(texts) == {"shard-000000.tar", "shard-000001.tar", "shard-000003.tar", None}
    assert any("num_samples" in p["problem"] for p in s["problems"] if p["shard"] is None)


def test_nothing_to_verify_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        verify_shardset(tmp_path / "missing", progress=False)
    with pytest.raises(UserError, match="holds no shard set"):
        verify_shardset(tmp_path, progress=False)


@pytest.mark.gpu
def test_gpu_decoding_passes_good_sets_and_names_a_corrupt_image(written, tmp_path):
    assert verify_shardset(written, device="gpu", progress=False)["sets"][0]["device"] == "mixed"
    bad = tmp_path / "bad"
    shutil.copytree(written / "val", bad)
    ext, offset, size, name = parse_index((bad / "shard-000000.idx").read_text())[1][0]
    with open(bad / "shard-000000.tar", "r+b") as f:  # no decoder recognizes an image without its header
        f.seek(offset)
        f.write(b"\0" * 64)
    s = verify_shardset(bad, device="gpu", progress=False)["sets"][0]
    assert s["bad_samples"] == [f"shard-000000.tar:{name.rsplit('.', 1)[0]}"]
