"""``dino-pipe shard`` end to end: layouts, odd files, determinism, resume after kill -9, conflicts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import photo_crops
from PIL import Image

from dino_pipe.errors import UserError
from dino_pipe.shards.journal import JOURNAL_NAME, read_journal
from dino_pipe.shards.manifest import load_manifest
from dino_pipe.shards.writer import ShardOptions, shard_tree


def save(path: Path, a: np.ndarray, fmt: str = "JPEG", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}) | kw)
    return path


def read_with_dali(folder: Path) -> list[tuple[tuple, int | None]]:
    """Every sample of a shard set through DALI's webdataset reader (with our .idx) + CPU decoder."""
    from nvidia.dali import fn, pipeline_def, types

    m = load_manifest(folder)
    paths = [str(folder / s["file"]) for s in m["shards"]]
    idx = [str(folder / s["index"]) for s in m["shards"]]
    ext = ["jpg", "cls"] if m["labeled"] else ["jpg"]

    @pipeline_def(batch_size=16, num_threads=2, device_id=None)
    def pipe():
        outs = fn.readers.webdataset(paths=paths, index_paths=idx, ext=ext, missing_component_behavior="error",
                                     pad_last_batch=True, name="r")
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return (fn.decoders.image(outs[0], device="cpu", output_type=types.RGB), *outs[1:])

    p = pipe()
    p.build()
    n = p.epoch_size("r")
    got = []
    while len(got) < n:
        outs = p.run()
        for i in range(len(outs[0])):
            label = int(bytes(np.asarray(outs[1][i]))) if m["labeled"] else None
            got.append((np.asarray(outs[0][i]).shape, label))
    assert n == m["num_samples"]
    return got[:n]


def tar_members(folder: Path) -> dict[str, bytes]:
    out = {}
    for t in sorted(folder.glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                out[m.name] = tf.extractfile(m).read()
    return out


def set_bytes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*"))}


def without_workers(manifest: dict) -> dict:
    return {**manifest, "options": {k: v for k, v in manifest["options"].items() if k != "workers"}}


# ---------------------------------------------------------------- layouts


def test_imagenet_layout_train_and_val_share_labels(tmp_path, photos):
    crops = photo_crops(photos, 40, seed=2, size=(64, 48))
    for i, a in enumerate(crops[:30]):
        save(tmp_path / "src" / "train" / ["cat", "dog", "eel"][i % 3] / f"t{i}.JPEG", a)
    for i, a in enumerate(crops[30:]):
        save(tmp_path / "src" / "val" / ["cat", "eel"][i % 2] / f"v{i}.JPEG", a)
    result = shard_tree(tmp_path / "src", tmp_path / "out", ShardOptions(shard_samples=8, workers=2), progress=False)
    assert result["layout"] == "imagenet" and [s["split"] for s in result["sets"]] == ["train", "val"]
    train, val = load_manifest(tmp_path / "out" / "train"), load_manifest(tmp_path / "out" / "val")
    assert train["classes"] == val["classes"] == ["cat", "dog", "eel"]
    assert (train["num_samples"], len(train["shards"]), val["num_samples"], val["split"]) == (30, 4, 10, "val")
    # the webdataset library reads the shards; labels follow train's mapping (eel = 2 in val too)
    for split, m in (("train", train), ("val", val)):
        recs = list(
            wds.WebDataset([str(tmp_path / "out" / split / s["file"]) for s in m["shards"]], shardshuffle=False)
        )
        assert len(recs) == m["num_samples"] and len({r["__key__"] for r in recs}) == len(recs)
        for r in recs:
            assert m["classes"][int(r["cls"])] == r["__key__"].split("__")[0]
            assert r["jpg"][:2] == b"\xff\xd8"
    labels = sorted(label for _, label in read_with_dali(tmp_path / "out" / "val"))
    assert labels == [0] * 5 + [2] * 5


def test_single_imagefolder_and_unlabeled_folder_default_out(tmp_path, photos, monkeypatch):
    crops = photo_crops(photos, 12, seed=3, size=(48, 40))
    for i, a in enumerate(crops):
        save(tmp_path / "folder" / f"c{i % 2}" / f"{i}.jpg", a)
        save(tmp_path / "flat" / ("sub/" if i % 3 == 0 else "") / f"{i}.jpg", a)
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    r1 = shard_tree(tmp_path / "folder", options=ShardOptions(workers=1), progress=False)
    r2 = shard_tree(tmp_path / "flat", options=ShardOptions(workers=1), progress=False)
    assert (r1["layout"], r2["layout"]) == ("imagefolder", "unlabeled")
    folder, flat = load_manifest("shards/folder"), load_manifest("shards/flat")
    assert folder["classes"] == ["c0", "c1"] and folder["labeled"] and folder["split"] is None
    assert flat["classes"] == [] and not flat["labeled"] and flat["num_samples"] == 12 and flat["ignored"] == 1
    assert not any(name.endswith(".cls") for name in tar_members(Path("shards/flat")))
    assert [label for _, label in read_with_dali(Path("shards/flat"))] == [None] * 12


# ---------------------------------------------------------------- odd files


@pytest.fixture()
def odd_tree(tmp_path, photos) -> Path:
    src = tmp_path / "odd"
    crops = photo_crops(photos, 8, seed=4, size=(80, 60))
    good = [save(src / "a" / f"good{i}.jpg", a) for i, a in enumerate(crops[:4])]
    save(src / "a" / "progressive.jpg", crops[4], progressive=True)
    data = good[0].read_bytes()
    (src / "b").mkdir()
    (src / "b" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (src / "b" / "zero.jpg").write_bytes(b"")
    (src / "b" / "garbage.jpg").write_bytes(os.urandom(3000))
    save(src / "b" / "png_named.JPEG", crops[5], fmt="PNG")
    Image.fromarray(crops[6]).convert("CMYK").save(src / "b" / "cmyk.jpg", quality=90)
    Image.fromarray(crops[6][..., 1]).save(src / "b" / "gray.jpg", quality=90)
    pal = Image.fromarray(crops[7]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(src / "b" / "palette.png", transparency=0)
    Image.fromarray((np.arange(50 * 70, dtype=np.uint32).reshape(50, 70) * 18).astype(np.uint16)).save(
        src / "b" / "deep16.png"
    )
    sideways = np.zeros((40, 60, 3), np.uint8)
    sideways[:, :30] = (220, 20, 20)
    exif = Image.Exif()
    exif[0x0112] = 6
    save(src / "b" / "rotated.jpg", sideways, exif=exif.tobytes())
    save(src / "b" / "huge.jpg", np.asarray(Image.fromarray(crops[0]).resize((2000, 1500))))
    (src / "b" / "readme.txt").write_text("hello")
    (src / "b" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "b" / "labels.xml").write_text("<x/>")
    return src


def test_odd_files_are_kept_converted_skipped_or_ignored(odd_tree, tmp_path):
    out = tmp_path / "out"
    result = shard_tree(odd_tree, out, ShardOptions(shard_samples=5, max_side=512, workers=2), progress=False)
    s = result["sets"][0]
    m = load_manifest(out)
    assert (m["num_samples"], s["skipped"], m["ignored"], m["converted"], m["source_files"]) == (12, 3, 3, 7, 15)
    reasons = {x["path"]: x["reason"] for x in m["skipped"]}
    assert reasons == {
        "b/truncated.jpg": "truncated JPEG (no end-of-image marker)",
        "b/zero.jpg": "empty file (0 bytes)",
        "b/garbage.jpg": "not an image PIL can read (unknown format)",
    }
    assert m["conversions"] == {"CMYK JPEG": 1, "EXIF-rotated": 1, "PNG I;16": 1, "PNG P": 1, "PNG RGB": 1,
                                "downscaled": 1, "grayscale JPEG": 1}
    members = tar_members(out)
    # valid RGB JPEGs (baseline and progressive) are stored as their original bytes
    for name in ("good0", "good1", "good2", "good3", "progressive"):
        assert members[f"a__{name}.jpg"] == (odd_tree / "a" / f"{name}.jpg").read_bytes()
    for name in ("png_named", "cmyk", "gray", "palette", "deep16", "rotated", "huge"):
        im = Image.open(io.BytesIO(members[f"b__{name}.jpg"]))
        assert (im.format, im.mode) == ("JPEG", "RGB")
        assert members[f"b__{name}.cls"] == b"1"
    upright = np.asarray(Image.open(io.BytesIO(members["b__rotated.jpg"])))
    assert upright.shape == (60, 40, 3) and upright[:25, :, 0].min() > 180 and upright[35:, :, 0].max() < 60
    assert max(Image.open(io.BytesIO(members["b__huge.jpg"])).size) == 512
    # every stored sample decodes with DALI, read through our .idx files
    decoded = read_with_dali(out)
    assert len(decoded) == 12 and sorted(label for _, label in decoded) == [0] * 5 + [1] * 7
    assert (60, 40, 3) in [shape for shape, _ in decoded]


# ---------------------------------------------------------------- determinism and resume


@pytest.fixture()
def png_tree(tmp_path, photos) -> Path:
    """240 PNG photo crops (conversion makes each image take a few ms), 4 classes."""
    src = tmp_path / "pngs"
    crops = photo_crops(photos, 24, seed=6, size=(200, 160))
    first = [save(src / f"c{i % 4}" / f"p{i:03d}.png", a, fmt="PNG") for i, a in enumerate(crops)]
    for copy in range(1, 10):
        for i, p in enumerate(first):
            (src / f"c{(i + copy) % 4}" / f"p{copy * 24 + i:03d}.png").write_bytes(p.read_bytes())
    return src


def test_byte_identical_across_reruns_and_worker_counts(tmp_path, photos):
    crops = photo_crops(photos, 60, seed=7, size=(64, 48))
    for i, a in enumerate(crops):
        save(tmp_path / "src" / f"k{i % 3}" / f"{i}.jpg", a) if i % 5 else save(
            tmp_path / "src" / f"k{i % 3}" / f"{i}.png", a, fmt="PNG"
        )
    outs = []
    for n, workers in enumerate((1, 2, 2)):
        shard_tree(
            tmp_path / "src",
            tmp_path / f"out{n}",
            ShardOptions(shard_samples=7, seed=11, workers=workers),
            progress=False,
        )
        outs.append(tmp_path / f"out{n}")
    first = set_bytes(outs[0])
    assert len(first) == 2 * 9  # 60 samples / 7 per shard = 9 shards, tar + idx each
    assert set_bytes(outs[1]) == first == set_bytes(outs[2])
    manifests = [json.loads((o / "manifest.json").read_text()) for o in outs]
    assert without_workers(manifests[0]) == without_workers(manifests[1]) and manifests[1] == manifests[2]
    # shuffled across shards: the first shard is not the first files in path order
    with tarfile.open(outs[0] / "shard-000000.tar") as tf:
        first_keys = [m.name for m in tf.getmembers()][::2]
    assert first_keys != sorted(first_keys)
    other = tmp_path / "seed12"
    shard_tree(tmp_path / "src", other, ShardOptions(shard_samples=7, seed=12, workers=1), progress=False)
    assert set_bytes(other) != first


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_resume_after_kill_9_gives_the_uninterrupted_result(png_tree, tmp_path):
    options = ShardOptions(shard_samples=5, workers=2)
    shard_tree(png_tree, tmp_path / "ref", options, progress=False)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "dino_pipe",
        "shard",
        str(png_tree),
        "--out",
        str(out),
        "--shard-samples",
        "5",
        "--workers",
        "2",
        "-q",
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    journal = out / JOURNAL_NAME
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 4:  # header + 3 finished shards
            break
        time.sleep(0.002)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers and not any(_alive(p) for p in workers), "orphaned workers kept running"
    header, records = read_journal(out)
    assert len(records) >= 3
    tampered = out / records[0]["file"]  # a journaled shard damaged after the kill must be rewritten
    tampered.write_bytes(tampered.read_bytes()[:-1] + b"\x01")

    result = shard_tree(png_tree, out, options, progress=False)
    s = result["sets"][0]
    assert s["status"].startswith("resumed") and 2 <= s["resumed_shards"] < 48
    assert set_bytes(out) == set_bytes(tmp_path / "ref")
    assert json.loads((out / "manifest.json").read_text()) == json.loads(
        (tmp_path / "ref" / "manifest.json").read_text()
    )
    assert not journal.exists() and not list(out.glob(".*tmp"))


def test_rerun_is_up_to_date_and_a_different_set_is_refused(tmp_path, photos):
    for i, a in enumerate(photo_crops(photos, 10, seed=8, size=(48, 40))):
        save(tmp_path / "src" / f"{i}.jpg", a)
    out = tmp_path / "out"
    shard_tree(tmp_path / "src", out, ShardOptions(shard_samples=4, workers=1), progress=False)
    before = set_bytes(out) | {"manifest.json": hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()}
    again = shard_tree(tmp_path / "src", out, ShardOptions(shard_samples=4, workers=2), progress=False)
    assert again["sets"][0]["status"] == "up to date"
    with pytest.raises(UserError, match=r"different shard set \(seed=0 \(now 1\)\).*--force"):
        shard_tree(tmp_path / "src", out, ShardOptions(shard_samples=4, seed=1, workers=1), progress=False)
    save(tmp_path / "src" / "new.jpg", photo_crops(photos, 1, seed=9, size=(48, 40))[0])
    with pytest.raises(UserError, match="source tree changed"):
        shard_tree(tmp_path / "src", out, ShardOptions(shard_samples=4, workers=1), progress=False)
    after = set_bytes(out) | {"manifest.json": hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()}
    assert after == before  # nothing destroyed
    forced = shard_tree(
        tmp_path / "src", out, ShardOptions(shard_samples=4, seed=1, workers=1), force=True, progress=False
    )
    assert forced["sets"][0]["num_samples"] == 11 and load_manifest(out)["options"]["seed"] == 1
    assert len(list(out.glob("*.tar"))) == 3

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data-0001.tar").write_bytes(b"\0" * 1024)
    with pytest.raises(UserError, match="data-0001.tar.*not written by this run"):
        shard_tree(tmp_path / "src", foreign, ShardOptions(workers=1), progress=False)
