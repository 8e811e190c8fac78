"""The shard file formats: tar headers, DALI .idx (vs wds2idx), keys, the plan, the manifest loader."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dino_pipe.errors import UserError
from dino_pipe.shards.index import IndexFormatError, format_index, group_samples, parse_index
from dino_pipe.shards.layout import make_keys, sanitize_key
from dino_pipe.shards.manifest import load_manifest
from dino_pipe.shards.plan import SAMPLE_OVERHEAD, plan_shards
from dino_pipe.shards.tar import TarFormatError, TarShardWriter, member_header, read_members

WDS2IDX = [sys.executable, "-m", "wds2idx"]  # DALI's own index tool (works without its console script)


@pytest.mark.parametrize(
    "name,size", [("a.jpg", 0), ("class_01__img_00001.jpg", 123456), ("k" * 96 + ".cls", 8**11 - 1)]
)
def test_member_header_equals_tarfile_ustar(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    assert member_header(name, size) == info.tobuf(format=tarfile.USTAR_FORMAT, encoding="ascii", errors="strict")


def _write_tar(path: Path, samples: list[tuple[str, bytes, bytes]]) -> list:
    with open(path, "wb") as f:
        w = TarShardWriter(f)
        for key, jpg, cls in samples:
            w.add(f"{key}.jpg", jpg)
            w.add(f"{key}.cls", cls)
        size = w.close()
    assert size == path.stat().st_size and size % 10240 == 0
    return w.members


def test_tar_is_standard_and_clock_free(tmp_path):
    samples = [(f"k{i:03d}", bytes(range(256)) * (i + 1), str(i % 3).encode()) for i in range(7)]
    members = _write_tar(tmp_path / "s.tar", samples)
    with tarfile.open(tmp_path / "s.tar") as t:
        infos = t.getmembers()
        assert [m.name for m in infos] == [m.name for m in members]
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.mode == 0o644 for m in infos)
        assert t.extractfile("k003.jpg").read() == samples[3][1]
    # offsets the writer reports point at the data; the fast reader finds the same members
    data = (tmp_path / "s.tar").read_bytes()
    assert all(
        data[m.offset : m.offset + m.size] == (samples[i // 2][1] if i % 2 == 0 else samples[i // 2][2])
        for i, m in enumerate(members)
    )
    with open(tmp_path / "s.tar", "rb") as f:
        assert list(read_members(f, len(data))) == members


def test_index_equals_wds2idx_output(tmp_path):
    samples = [(f"class_{i % 3:02d}__img_{i:05d}", bytes([i]) * (100 + 37 * i), str(i % 3).encode()) for i in range(25)]
    members = _write_tar(tmp_path / "s.tar", samples)
    ours = format_index(group_samples(members))
    subprocess.run([*WDS2IDX, str(tmp_path / "s.tar"), str(tmp_path / "s.idx")], check=True, capture_output=True)
    assert ours == (tmp_path / "s.idx").read_text()
    assert parse_index(ours) == group_samples(members)


def test_reader_rejects_corrupt_and_truncated_tars(tmp_path):
    _write_tar(tmp_path / "s.tar", [("a", b"x" * 1000, b"1"), ("b", b"y" * 1000, b"2")])
    data = bytearray((tmp_path / "s.tar").read_bytes())
    cut = bytes(data[:1500])
    with pytest.raises(TarFormatError, match="past the end|without the end"):
        list(read_members(io.BytesIO(cut), len(cut)))
    data[2560 + 3] ^= 0xFF  # inside the name field of the third header (b.jpg)
    with pytest.raises(TarFormatError, match="checksum"):
        list(read_members(io.BytesIO(bytes(data)), len(data)))


def test_parse_index_errors():
    with pytest.raises(IndexFormatError):
        parse_index("v1.1 1\njpg 512 10 a.jpg\n")
    with pytest.raises(IndexFormatError, match="header says 2"):
        parse_index("v1.2 2\njpg 512 10 a.jpg\n")


def test_keys_have_no_dots_and_are_unique():
    rel = ["n01/img.001.JPEG", "n01/img_001.jpg", "n01/img 001.png", "dir.with.dots/ü.jpg", "a/" + "x" * 200 + ".jpg"]
    keys = make_keys(rel)
    assert len(set(keys)) == len(keys)
    assert all("." not in k and "/" not in k and len(k) <= 92 and k.isascii() for k in keys)
    assert keys[:3] == ["n01__img_001", "n01__img_001_2", "n01__img_001_3"]
    assert sanitize_key("dir.with.dots/ü.jpg") == "dir_with_dots___"
    assert make_keys(rel) == keys  # stable


def test_plan_is_a_seeded_partition_within_limits():
    sizes = [50_000 + 997 * (i % 13) for i in range(1000)]
    plan = plan_shards(sizes, seed=3, max_samples=64, max_bytes=2_000_000)
    flat = [i for shard in plan for i in shard]
    assert sorted(flat) == list(range(1000)) and flat != list(range(1000))
    assert all(len(s) <= 64 and sum(sizes[i] + SAMPLE_OVERHEAD for i in s) <= 2_000_000 for s in plan)
    assert plan == plan_shards(sizes, seed=3, max_samples=64, max_bytes=2_000_000)
    assert plan != plan_shards(sizes, seed=4, max_samples=64, max_bytes=2_000_000)
    assert [len(s) for s in plan_shards(sizes, 0, 300, 0)] == [300, 300, 300, 100]


def test_load_manifest_accepts_the_fixture_and_names_problems(tiny_shardset, tmp_path):
    m = load_manifest(tiny_shardset)
    assert m["num_samples"] == 96 and len(m["shards"]) == 3 and m["labeled"]
    assert load_manifest(tiny_shardset / "manifest.json") == m
    with pytest.raises(UserError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no manifest.json"):
        load_manifest(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_manifest(tmp_path / "empty")
    bad = dict(m, shards=[], num_samples=0)
    (tmp_path / "empty" / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="empty"):
        load_manifest(tmp_path / "empty")
    parent = tmp_path / "parent"
    (parent / "train").mkdir(parents=True)
    (parent / "train" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="holds shard sets train"):
        load_manifest(parent)
