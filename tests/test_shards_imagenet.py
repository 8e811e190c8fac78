"""``dino-pipe shard`` on ImageNet as users have it: flat val + devkit/CSV, a Kaggle download, the
three archives read in place (byte-identical to the extracted tree, resumable after kill -9), and the
wrappers and split folders that must never become classes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_crops
from PIL import Image
from typer.testing import CliRunner

from dino_pipe.cli import app
from dino_pipe.errors import UserError
from dino_pipe.shards.journal import JOURNAL_NAME, read_journal
from dino_pipe.shards.manifest import load_manifest
from dino_pipe.shards.writer import ShardOptions, shard_tree

runner = CliRunner()

WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted: labels 0, 1, 2
WORDS = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
         "n01484850": "great white shark, white shark"}
DEVKIT_ID = {"n01484850": 1, "n01440764": 2, "n01443537": 3}  # ILSVRC2012_ID is NOT sorted-wnid order
VAL_WNIDS = ["n01443537", "n01484850", "n01440764", "n01484850", "n01443537", "n01440764", "n01484850"]
PER_CLASS = 4


def jpeg(seed: int, size=(24, 20)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), seed % 250, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def train_images() -> dict[str, dict[str, bytes]]:
    """{wnid: {file name: bytes}}; one image is a PNG named .JPEG (it gets converted)."""
    out = {}
    for c, wnid in enumerate(WNIDS):
        out[wnid] = {f"{wnid}_{i + 10}.JPEG": jpeg(100 * c + i) for i in range(PER_CLASS)}
    out[WNIDS[1]][f"{WNIDS[1]}_99.JPEG"] = png(7)
    return out


def val_images() -> dict[str, bytes]:
    return {f"ILSVRC2012_val_{i:08d}.JPEG": jpeg(1000 + i) for i in range(1, len(VAL_WNIDS) + 1)}


def meta_mat() -> bytes:
    """The devkit's meta.mat: a synsets struct array, leaves (num_children 0) with IDs 1..n, plus a parent."""
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(DEVKIT_ID[w], w, WORDS[w], "a fish", 0, np.zeros((1, 0)), 0, 1300) for w in WNIDS]
    rows.append((len(WNIDS) + 1, "n02512053", "fish", "any of various vertebrates", 3, np.array([1, 2, 3]), 1, 0))
    synsets = np.empty((len(rows), 1), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(sorted(rows, key=lambda r: r[0])):
        synsets[i, 0] = row
    buf = io.BytesIO()
    savemat(buf, {"synsets": synsets})
    return buf.getvalue()


def ground_truth() -> bytes:
    return "".join(f"{DEVKIT_ID[w]}\n" for w in VAL_WNIDS).encode()


def add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_300_000_000
    tf.addfile(info, io.BytesIO(data))


def write_devkit_tar(folder: Path) -> None:
    with tarfile.open(folder / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tf:
        add_bytes(tf, "ILSVRC2012_devkit_t12/COPYING", b"terms")
        add_bytes(tf, "ILSVRC2012_devkit_t12/data/meta.mat", meta_mat())
        add_bytes(tf, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", ground_truth())


def write_kaggle_csvs(folder: Path) -> None:
    rows = [f"ILSVRC2012_val_{i:08d},{w} 1 2 30 40 {w} 3 4 10 12" for i, w in enumerate(VAL_WNIDS, start=1)]
    (folder / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")
    (folder / "LOC_synset_mapping.txt").write_text("".join(f"{w} {WORDS[w]}\n" for w in WNIDS))


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def extracted_tree(root: Path, labels: str = "devkit_tar") -> Path:
    """The official archives extracted: train/<wnid>/*.JPEG, a flat val/, and a label source."""
    for wnid, files in train_images().items():
        write_files(root / "train" / wnid, files)
    write_files(root / "val", val_images())
    if labels == "devkit_tar":
        write_devkit_tar(root)
    elif labels == "devkit_folder":
        devkit = {"meta.mat": meta_mat(), "ILSVRC2012_validation_ground_truth.txt": ground_truth()}
        write_files(root / "ILSVRC2012_devkit_t12" / "data", devkit)
    elif labels == "csv":
        write_kaggle_csvs(root)
    return root


def archives(root: Path, train: dict[str, dict[str, bytes]] | None = None) -> Path:
    """The three archives as torchvision.datasets.ImageNet expects them."""
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as outer:
        for wnid, files in (train or train_images()).items():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for name, data in files.items():
                    add_bytes(inner, name, data)
            add_bytes(outer, f"{wnid}.tar", buf.getvalue())
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tf:
        for name, data in val_images().items():
            add_bytes(tf, name, data)
    write_devkit_tar(root)
    return root


def shards(folder: Path) -> dict[str, bytes]:
    """{member name: bytes} over every shard of a set."""
    out = {}
    for t in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(t) as tf:
            out.update({m.name: tf.extractfile(m).read() for m in tf.getmembers()})
    return out


def set_bytes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*"))}


def assert_true_labels(out: Path) -> None:
    """Every label equals the truth: sorted-wnid index of the image's class; no wrapper is a class."""
    train, val = load_manifest(out / "train"), load_manifest(out / "val")
    assert train["classes"] == val["classes"] == WNIDS
    assert train["class_names"] == val["class_names"] == [WORDS[w] for w in WNIDS]
    got = shards(out / "train")
    truth = {f"{w}__{Path(n).stem}": WNIDS.index(w) for w, files in train_images().items() for n in files}
    assert {k[:-4]: int(v) for k, v in got.items() if k.endswith(".cls")} == truth
    got = shards(out / "val")
    truth = {f"ILSVRC2012_val_{i:08d}": WNIDS.index(w) for i, w in enumerate(VAL_WNIDS, start=1)}
    assert {k[:-4]: int(v) for k, v in got.items() if k.endswith(".cls")} == truth
    assert got["ILSVRC2012_val_00000001.jpg"] == val_images()["ILSVRC2012_val_00000001.JPEG"]  # stored as is


# ---------------------------------------------------------------- the forms


@pytest.mark.parametrize("labels", ["devkit_tar", "devkit_folder", "csv"])
def test_flat_val_is_labelled_by_the_devkit_or_the_kaggle_csv(tmp_path, labels):
    src = extracted_tree(tmp_path / "imagenet", labels)
    result = shard_tree(src, tmp_path / "out", ShardOptions(shard_samples=3, workers=1), progress=False)
    assert result["layout"] == "imagenet" and [s["split"] for s in result["sets"]] == ["train", "val"]
    if labels == "csv":  # the CSV names no words, but LOC_synset_mapping.txt beside it does
        assert load_manifest(tmp_path / "out" / "val")["label_source"].endswith("LOC_val_solution.csv")
    else:
        assert "ILSVRC2012_devkit_t12" in load_manifest(tmp_path / "out" / "val")["label_source"]
    assert_true_labels(tmp_path / "out")
    train = load_manifest(tmp_path / "out" / "train")
    png_path = f"train/{WNIDS[1]}/{WNIDS[1]}_99.JPEG"
    assert train["converted"] == 1 and train["converted_files"] == [{"path": png_path, "reason": "PNG RGB"}]


def test_kaggle_root_finds_cls_loc_and_skips_test(tmp_path):
    root = tmp_path / "imagenet-object-localization-challenge"
    cls_loc = root / "ILSVRC" / "Data" / "CLS-LOC"
    for wnid, files in train_images().items():
        write_files(cls_loc / "train" / wnid, files)
    write_files(cls_loc / "val", val_images())
    write_files(cls_loc / "test", {"ILSVRC2012_test_00000001.JPEG": jpeg(5)})
    write_files(root / "ILSVRC" / "Annotations" / "CLS-LOC" / "val", {"ILSVRC2012_val_00000001.xml": b"<a/>"})
    write_kaggle_csvs(root)
    (root / "LOC_train_solution.csv").write_text("ImageId,PredictionString\n")
    r = runner.invoke(app, ["shard", str(root), "--out", str(tmp_path / "out"), "--shard-samples", "3",
                            "--workers", "1", "-q", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert "skipped ILSVRC/Data/CLS-LOC/test: unlabelled test images" in r.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["form"] == "Kaggle download, val labels from LOC_val_solution.csv"
    assert [s["split"] for s in result["sets"]] == ["train", "val"]
    (skipped,) = result["skipped_folders"]
    assert skipped["path"] == "ILSVRC/Data/CLS-LOC/test" and "no labels" in skipped["reason"]
    assert result["notes"] == [f"skipped {skipped['path']}: {skipped['reason']}"]
    assert load_manifest(tmp_path / "out" / "val")["skipped_folders"] == result["skipped_folders"]
    assert_true_labels(tmp_path / "out")
    # SRC inside the download: the label files above it are still found
    inner = shard_tree(root / "ILSVRC", tmp_path / "out2", ShardOptions(shard_samples=3, workers=1), progress=False)
    assert inner["form"].startswith("Kaggle download") and set_bytes(tmp_path / "out2" / "val") == set_bytes(
        tmp_path / "out" / "val")


def test_archives_give_the_same_shards_as_the_extracted_tree(tmp_path):
    options = ShardOptions(shard_samples=4, workers=2)
    extracted_tree(tmp_path / "tree")
    archives(tmp_path / "tars")
    shard_tree(tmp_path / "tree", tmp_path / "a", options, progress=False)
    result = shard_tree(tmp_path / "tars", tmp_path / "b", options, progress=False)
    assert result["form"].startswith("archives")
    for split in ("train", "val"):
        assert set_bytes(tmp_path / "a" / split) == set_bytes(tmp_path / "b" / split) != {}
        a, b = load_manifest(tmp_path / "a" / split), load_manifest(tmp_path / "b" / split)
        for key in ("classes", "class_names", "num_samples", "shards", "converted_files", "skipped"):
            assert a[key] == b[key]
    assert_true_labels(tmp_path / "b")
    (tmp_path / "tars" / "ILSVRC2012_img_train.tar").rename(tmp_path / "train.tar")  # val alone: the devkit's classes
    alone = shard_tree(tmp_path / "tars", tmp_path / "c", options, progress=False)
    assert [s["split"] for s in alone["sets"]] == ["val"] and set_bytes(tmp_path / "c" / "val") == set_bytes(
        tmp_path / "a" / "val")
    (tmp_path / "train.tar").rename(tmp_path / "tars" / "ILSVRC2012_img_train.tar")
    again = shard_tree(tmp_path / "tars", tmp_path / "b", options, progress=False)
    assert [s["status"] for s in again["sets"]] == ["up to date", "up to date"]


def test_archive_shard_resumes_after_kill_9(tmp_path, photos):
    """Converted PNGs make each shard take a while, so the run is killed between shards."""
    crops = photo_crops(photos, 24, seed=6, size=(200, 160))
    pngs = []
    for a in crops:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        pngs.append(buf.getvalue())
    train = {w: {f"{w}_{i:03d}.JPEG": pngs[(i + c) % 24] for i in range(48)} for c, w in enumerate(WNIDS)}
    src = archives(tmp_path / "tars", train)
    options = ShardOptions(shard_samples=4, workers=1)
    shard_tree(src, tmp_path / "ref", options, progress=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dino_pipe", "shard", str(src), "--out", str(out), "--shard-samples", "4",
           "--workers", "1", "-q"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    journal = out / "train" / JOURNAL_NAME
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 4:  # header + 3 finished shards
            break
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (out / "train" / "manifest.json").exists(), "the run finished before it could be killed"
    assert len(read_journal(out / "train")[1]) >= 3
    result = shard_tree(src, out, options, progress=False)
    assert result["sets"][0]["status"].startswith("resumed")
    for split in ("train", "val"):
        assert set_bytes(out / split) == set_bytes(tmp_path / "ref" / split)
        assert json.loads((out / split / "manifest.json").read_text()) == json.loads(
            (tmp_path / "ref" / split / "manifest.json").read_text())


# ---------------------------------------------------------------- wrappers, split folders, errors


def test_a_single_wrapper_folder_is_descended_and_said_so(tmp_path):
    extracted_tree(tmp_path / "download" / "imagenet")
    result = shard_tree(tmp_path / "download", tmp_path / "out", ShardOptions(workers=1), progress=False)
    assert result["notes"][0] == f"{tmp_path / 'download'} holds only the folder imagenet: reading it"
    assert_true_labels(tmp_path / "out")


def test_split_folders_and_lone_classes_are_never_classes(tmp_path):
    def error(src: Path) -> str:
        with pytest.raises(UserError) as e:
            shard_tree(src, tmp_path / "out", ShardOptions(workers=1), progress=False)
        assert "\n" not in str(e.value)
        return str(e.value)

    write_files(tmp_path / "a" / "test", {"x.JPEG": jpeg(1)})
    write_files(tmp_path / "a" / "other", {"y.JPEG": jpeg(2)})
    assert "holds the folder 'test', a download or split folder, not a class" in error(tmp_path / "a")
    write_files(tmp_path / "b" / "cats", {"x.JPEG": jpeg(1)})
    assert "holds only the folder cats (one class is not a labelled set)" in error(tmp_path / "b")
    write_files(tmp_path / "c" / "ILSVRC" / "Data" / "Other", {"x.JPEG": jpeg(1)})
    write_files(tmp_path / "c" / "ILSVRC" / "ImageSets", {"x.JPEG": jpeg(1)})
    assert "holds the folder 'Data'" in error(tmp_path / "c")
    write_files(tmp_path / "d" / "train", {"n01440764.tar": b"\0" * 1024, "n01443537.tar": b"\0" * 1024})
    assert "holds per-class tars (n01440764.tar, ...) and no class folders" in error(tmp_path / "d")
    assert not (tmp_path / "out").exists()
    write_files(tmp_path / "e" / "val", val_images())  # a flat split folder given as SRC: said so
    result = shard_tree(tmp_path / "e" / "val", tmp_path / "out", ShardOptions(workers=1), progress=False)
    assert result["layout"] == "unlabeled" and "looks like a split folder" in result["notes"][0]


def test_flat_val_without_labels_and_devkit_without_scipy_are_one_line_errors(tmp_path, monkeypatch):
    src = extracted_tree(tmp_path / "imagenet", labels="none")
    r = runner.invoke(app, ["shard", str(src), "--out", str(tmp_path / "out")])
    lines = r.output.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1, r.output
    assert "holds images but no class folders, and nothing labels them" in lines[0]
    assert "ILSVRC2012_devkit_t12.tar.gz" in lines[0] and "LOC_val_solution.csv" in lines[0]
    write_devkit_tar(src)
    bad = archives(tmp_path / "tars")
    data = (bad / "ILSVRC2012_img_val.tar").read_bytes()
    (bad / "ILSVRC2012_img_val.tar").write_bytes(data[:1000])  # cut inside the first image
    with pytest.raises(UserError, match=r"ILSVRC2012_img_val.tar is not a readable uncompressed tar: .*truncated"):
        shard_tree(bad, tmp_path / "out", ShardOptions(workers=1), progress=False)
    shutil.rmtree(src / "train" / WNIDS[2])  # val images of a class train does not have
    with pytest.raises(UserError, match=f"class {WNIDS[2]} .* is not a class of the train split"):
        shard_tree(src, tmp_path / "out", ShardOptions(workers=1), progress=False)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(UserError, match="needs scipy"):
        shard_tree(src, tmp_path / "out", ShardOptions(workers=1), progress=False)


def test_out_inside_src_is_not_read_as_source(tmp_path):
    src = tmp_path / "photos"
    for i in range(6):
        write_files(src / f"c{i % 2}", {f"{i}.jpg": jpeg(i)})
    args = ["shard", str(src), "--out", str(src / "shards"), "--workers", "1", "-q", "--json"]
    first = runner.invoke(app, [*args, str(tmp_path / "r1.json")])
    assert first.exit_code == 0, first.output
    before = set_bytes(src / "shards")
    second = runner.invoke(app, [*args, str(tmp_path / "r2.json")])
    assert second.exit_code == 0, second.output
    assert f"not reading {src / 'shards'} as source" in second.output
    result = json.loads((tmp_path / "r2.json").read_text())
    assert [s["status"] for s in result["sets"]] == ["up to date"] and result["sets"][0]["num_classes"] == 2
    assert set_bytes(src / "shards") == before and load_manifest(src / "shards")["classes"] == ["c0", "c1"]


def test_manifests_without_the_new_keys_still_load(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "shard-000000.tar").write_bytes(b"\0" * 1024)
    (folder / "manifest.json").write_text(json.dumps({
        "format": "dino-pipe-shards", "version": 1, "num_samples": 1, "classes": ["a"], "labeled": True,
        "shards": [{"file": "shard-000000.tar", "index": "shard-000000.idx", "samples": 1, "bytes": 1024,
                    "sha256": "0" * 64}]}))
    m = load_manifest(folder)
    assert m.get("class_names") is None and m.get("converted_files") is None
