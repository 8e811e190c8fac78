"""The shard writer's speed cuts keep its guarantees: every shard is fsynced before the manifest,
and the cached Huffman-table validation still rejects a bad table."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from conftest import write_image_tree
from PIL import Image

from dino_pipe.shards import writer
from dino_pipe.shards.jpeg import JpegAnomaly, inspect_jpeg
from dino_pipe.shards.writer import ShardOptions, shard_tree


@pytest.mark.parametrize("workers", [1, 2])
def test_every_shard_and_the_folder_are_fsynced_before_the_manifest(photos, tmp_path, monkeypatch, workers):
    src = write_image_tree(tmp_path / "src", photos, classes=2, per_class=6)
    out = tmp_path / "out"
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append("manifest-exists" if (out / "manifest.json").exists() else path.name)
        real_fsync(fd)

    monkeypatch.setattr(writer.os, "fsync", fsync)
    shard_tree(src, out, ShardOptions(shard_samples=4, workers=workers), progress=False)
    files = sorted(p.name for p in out.iterdir() if p.suffix in (".tar", ".idx"))
    ours = [name for name in synced if name.startswith("shard-") or name in ("out", "manifest-exists")]
    assert len(files) == 6 and "manifest-exists" not in ours
    assert sorted(set(ours) - {"out"}) == files and ours[-1] == "out"  # the folder after every shard


def test_cached_huffman_tables_still_reject_a_bad_one(photos):
    buf = io.BytesIO()
    Image.fromarray(photos[0][:64, :64]).save(buf, "JPEG", quality=90)
    good = buf.getvalue()
    inspect_jpeg(good)
    inspect_jpeg(good)  # second time from the cache
    dht = good.index(b"\xff\xc4")
    bad = bytearray(good)
    bad[dht + 4] = 0x27  # class 2: out of range
    for _ in range(2):
        with pytest.raises(JpegAnomaly, match="DHT class/id"):
            inspect_jpeg(bytes(bad))
