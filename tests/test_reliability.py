"""Every failure a user can cause ends in one ``error:`` line, a non-zero exit, no traceback, nothing
of theirs replaced and nothing written outside the output (the probe of 109 cases: these are the 24
that failed it once).

Disk-full cases run on a small tmpfs (root only; skipped with the reason elsewhere). Permission
cases run for real as a normal user; as root (whom permissions do not stop) opening the path is
made to fail with the same ``PermissionError`` a normal user gets.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import write_image_tree, write_minimal_shardset
from typer.testing import CliRunner

from dino_pipe.cli import app

runner = CliRunner()

TINY = ["model.arch=vit_tiny_patch16_224", "model.arch_kwargs={img_size: 32, patch_size: 8, depth: 1}",
        "model.out_dim=64", "model.hidden_dim=32", "model.bottleneck_dim=16", "data.batch_size=4",
        "data.global_size=32", "data.local_size=16", "data.n_local=2", "optim.warmup_epochs=0",
        "train.cpu_threads=1", "train.epochs=1"]


def run_cli(*args) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), f"raised {res.exception!r}\n{res.output}"
    return res.exit_code, res.output


def one_error_line(*args, code: int | None = None) -> str:
    """Run the CLI; assert a non-zero exit, no traceback and exactly one line, ``error: ...``."""
    exit_code, output = run_cli(*args)
    assert exit_code != 0, output
    if code is not None:
        assert exit_code == code, output
    assert "Traceback" not in output
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 (or 'dir'/'link') of everything under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture()
def small_fs(tmp_path):
    """A 32 MB tmpfs mounted for the test (unmounted in teardown); skip where none can be mounted."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("disk-full tests mount a small tmpfs, which needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder: Path) -> None:
    """Use up every free byte of the file system holding ``folder``."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.fixture()
def deny(monkeypatch):
    """``deny(path)``: reading ``path`` (a file, or anything in a folder) fails with EACCES.

    A real ``chmod 000``; as root, whom permissions do not stop, opening and listing the path are
    made to fail the way they do for everyone else."""
    denied: list[str] = []

    def blocked(p) -> bool:
        try:
            s = os.path.abspath(os.fspath(p))
        except TypeError:
            return False
        return any(s == d or s.startswith(d + os.sep) for d in denied)

    def wrap(fn):
        def inner(file, *a, **k):
            if not isinstance(file, int) and blocked(file):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
            return fn(file, *a, **k)
        return inner

    modes: list[tuple[Path, int]] = []

    def add(path: Path) -> None:
        modes.append((path, path.stat().st_mode))
        path.chmod(0)
        if os.geteuid() == 0:
            denied.append(os.path.abspath(path))
            if len(denied) == 1:
                for mod, name in ((builtins, "open"), (io, "open"), (os, "scandir"), (os, "listdir")):
                    monkeypatch.setattr(mod, name, wrap(getattr(mod, name)))

    yield add
    for path, mode in modes:
        path.chmod(mode)


def labelled_set(root: Path, photos, labels: list[str]) -> Path:
    from PIL import Image

    from dino_pipe.sample_data import photo_crops

    samples = []
    for i, a in enumerate(photo_crops(photos, len(labels), seed=3)):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=85)
        samples.append((f"s{i:04d}", buf.getvalue(), labels[i]))
    return write_minimal_shardset(root, samples, 4, ["a", "b", "c"])


# ------------------------------------------------------------------ 1. silent overwrite


def test_train_refuses_a_foreign_non_empty_output_folder(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("config.yaml", "summary.json", "metrics.jsonl"):
        (mine / name).write_text(f"my own {name}\n")
    before = snapshot(mine)
    line = one_error_line("train", "--data", "synthetic:8", "--out", mine, "--gpus", "0", "-q", *TINY, code=2)
    assert "not a dino-pipe run" in line and str(mine) in line
    assert snapshot(mine) == before


def test_train_output_new_empty_and_old_runs_still_work(tmp_path):
    run = tmp_path / "run"
    run.mkdir()  # an empty folder is fine
    args = ["train", "--data", "synthetic:8", "--out", run, "--gpus", "0", "-q", *TINY]
    assert run_cli(*args, "train.max_steps=1")[0] == 0
    assert (run / ".dino-pipe-run").is_file() and (run / "checkpoints" / "step-00000001.pt").is_file()
    (run / ".dino-pipe-run").unlink()  # a run made before the marker existed: its checkpoints mark it
    code, output = run_cli(*args, "train.max_steps=2")
    assert code == 0, output
    assert json.loads((run / "summary.json").read_text())["resumed_from"].endswith("step-00000001.pt")


# ------------------------------------------------------------------ 2. disk full


def test_disk_full_shard_with_no_space(small_fs, tree, tmp_path):
    fill(small_fs)
    before = snapshot(tree)
    line = one_error_line("shard", tree, "--out", small_fs / "shards", "--workers", "1", "-q", code=1)
    assert "No space left on device" in line and "free some space" in line and str(small_fs) in line
    assert snapshot(tree) == before
    assert not [p for p in small_fs.rglob("*") if p.name.endswith(".tmp")]


def test_disk_full_when_shard_writes_the_manifest(small_fs, tree, monkeypatch):
    from dino_pipe.shards import writer

    durable = writer.make_durable

    def then_fill(folder, names):  # the shards are written; the disk fills up before the manifest
        durable(folder, names)
        fill(small_fs)

    monkeypatch.setattr(writer, "make_durable", then_fill)
    line = one_error_line("shard", tree, "--out", small_fs / "shards", "--workers", "1", "-q", code=1)
    assert "manifest.json" in line and "No space left on device" in line
    assert not (small_fs / "shards" / "manifest.json").exists()
    assert not [p for p in small_fs.rglob("*") if p.name.endswith(".tmp")]
    (small_fs / "filler").unlink()
    monkeypatch.setattr(writer, "make_durable", durable)
    assert run_cli("shard", tree, "--out", small_fs / "shards", "--workers", "1", "-q")[0] == 0  # a rerun finishes


def test_disk_full_in_train_with_no_space(small_fs):
    fill(small_fs)
    line = one_error_line("train", "--data", "synthetic:8", "--out", small_fs / "run", "--gpus", "0", "-q",
                          *TINY, code=1)
    assert "No space left on device" in line and str(small_fs / "run") in line


@pytest.mark.slow  # starts two torch processes
def test_disk_full_in_train_with_two_processes(small_fs):
    fill(small_fs)
    line = one_error_line("train", "--data", "synthetic:8", "--out", small_fs / "run", "--gpus", "0", "--procs", "2",
                          "-q", *TINY, "data.batch_size=2", code=1)
    assert "No space left on device" in line and str(small_fs / "run") in line


def test_disk_full_when_train_writes_a_checkpoint(small_fs, monkeypatch):
    from dino_pipe.train import checkpoint

    save = checkpoint.save_checkpoint
    calls = []

    def fill_then_save(run_dir, state, keep=3):  # the second checkpoint hits a full disk
        calls.append(state["step"])
        if len(calls) == 2:
            fill(small_fs)
        return save(run_dir, state, keep)

    monkeypatch.setattr(checkpoint, "save_checkpoint", fill_then_save)
    run = small_fs / "run"
    line = one_error_line("train", "--data", "synthetic:8", "--out", run, "--gpus", "0", "-q", *TINY,
                          "train.checkpoint_every_steps=1", "train.max_steps=2", code=1)
    assert "step-00000002.pt" in line and "No space left on device" in line
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001.pt"]  # no torn file, no temp file
    (small_fs / "filler").unlink()
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    code, output = run_cli("train", "--data", "synthetic:8", "--out", run, "--gpus", "0", "-q", *TINY,
                           "train.checkpoint_every_steps=1", "train.max_steps=2")
    assert code == 0, output
    assert json.loads((run / "summary.json").read_text())["resumed_from"].endswith("step-00000001.pt")


def test_disk_full_in_export(small_fs, ckpt):
    fill(small_fs)
    line = one_error_line("export", "--checkpoint", ckpt, "--out", small_fs / "b.safetensors", code=1)
    assert "b.safetensors" in line and "No space left on device" in line
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]  # no partial file, no hidden .tmp


# ------------------------------------------------------------------ 3. symlinks in a shard source


def test_shard_symlink_policy(tree, tmp_path, photos):
    from dino_pipe.shards.writer import ShardOptions, shard_tree

    outside = write_image_tree(tmp_path / "outside", photos, classes=1, per_class=2, seed=5)
    a, b = tree / "class_00", tree / "class_01"
    (a / "loop").symlink_to("..")  # back to the tree root
    (a / "here").symlink_to(".")  # to the folder it is in
    (a / "self.jpg").symlink_to("self.jpg")  # to itself
    (a / "out.jpg").symlink_to(outside / "class_00" / "img_00000.jpg")
    (b / "outdir").symlink_to(outside)
    (b / "inside.jpg").symlink_to(a / "img_00000.jpg")  # stays inside: followed
    result = shard_tree(tree, tmp_path / "shards", ShardOptions(workers=1), progress=False)
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    links = {x["path"]: x["reason"] for x in manifest["skipped_links"]}
    assert sorted(links) == [
        "class_00/here",
        "class_00/loop",
        "class_00/out.jpg",
        "class_00/self.jpg",
        "class_01/outdir",
    ]
    assert "loop" in links["class_00/self.jpg"] and "loops back" in links["class_00/loop"]
    assert "loops back" in links["class_00/here"]
    assert "outside" in links["class_00/out.jpg"] and "outside" in links["class_01/outdir"]
    assert manifest["num_samples"] == 8 + 1 and result["sets"][0]["skipped_links"] == 5
    code, output = run_cli("shard", tree, "--out", tmp_path / "shards2", "--workers", "1", "-q")
    assert code == 0 and "did not follow 5 symlink(s)" in output.replace("\n", " ")


# ------------------------------------------------------------------ 4. patch size


@pytest.mark.parametrize("override,key", [("data.global_size=30", "data.global_size"),
                                          ("data.local_size=12", "data.local_size")])
def test_train_patch_size_checked_before_anything_is_written(tmp_path, override, key):
    line = one_error_line("train", "--data", "synthetic:8", "--out", tmp_path / "run", "--gpus", "0", "-q",
                          *TINY, override, code=2)
    assert key in line and "patch size 8" in line
    assert not (tmp_path / "run").exists()


def test_eval_knn_crop_not_a_multiple_of_the_patch(ckpt, tiny_shardset, tmp_path):
    line = one_error_line("eval", "knn", "--checkpoint", ckpt, "--train", tiny_shardset, "--val", tiny_shardset,
                          "--crop", "30", "--gpus", "0", "--json", tmp_path / "knn.json", code=2)
    assert "data.eval_crop" in line and "patch size 8" in line
    assert not (tmp_path / "knn.json").exists()


# ------------------------------------------------------------------ 5. unreadable paths


def test_train_unreadable_data_folder(tiny_shardset, tmp_path, deny):
    data = tmp_path / "data"
    shutil.copytree(tiny_shardset, data)
    deny(data)
    line = one_error_line("train", "--data", data, "--out", tmp_path / "run", "--gpus", "0", "-q", *TINY)
    assert "Permission denied" in line and str(data) in line and "permissions" in line
    assert not (tmp_path / "run").exists()


def test_verify_unreadable_tar(tiny_shardset, tmp_path, deny):
    data = tmp_path / "data"
    shutil.copytree(tiny_shardset, data)
    deny(data / "shard-000001.tar")
    code, output = run_cli("verify", data, "--workers", "1", "--device", "cpu", "-q")
    assert code == 1 and "Traceback" not in output
    bad = [ln for ln in output.splitlines() if ln.startswith("bad:") and "shard-0000" in ln]
    assert len(bad) == 1 and "shard-000001.tar: cannot read" in bad[0] and "Permission denied" in bad[0]


# ------------------------------------------------------------------ 6. inconsistent checkpoints


def test_resume_checkpoint_whose_weights_disagree_with_its_config(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", "synthetic:8", "--out", run, "--gpus", "0", "-q", *TINY, "train.max_steps=1"]
    assert run_cli(*args)[0] == 0
    path = run / "checkpoints" / "step-00000001.pt"
    ck = torch.load(path, weights_only=True)
    ck["student"] = {k: v for k, v in ck["student"].items() if "blocks.0" not in k}  # weights of another model
    torch.save(ck, path)
    before = snapshot(run)
    line = one_error_line(*args[:-1], "train.max_steps=2", code=2)
    assert "step-00000001.pt" in line and "do not fit its config" in line
    assert snapshot(run) == before


def test_truncated_checkpoint_names_the_previous_one(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", "synthetic:8", "--out", run, "--gpus", "0", "-q", *TINY,
            "train.checkpoint_every_steps=1", "train.max_steps=2"]
    assert run_cli(*args)[0] == 0
    newest = run / "checkpoints" / "step-00000002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    line = one_error_line(*args[:-1], "train.max_steps=3", code=2)
    assert "step-00000002.pt: damaged" in line and "previous checkpoint" in line and "step-00000001.pt" in line


@pytest.mark.parametrize("content", [b"PK\x03\x04 truncated", b"not a torch file at all", "list"])
def test_damaged_linear_state(ckpt, tiny_shardset, tmp_path, content):
    out = tmp_path / "lin"
    out.mkdir()
    if content == "list":
        torch.save([1, 2, 3], out / "linear_state.pt")  # loads, but is not a probe state
    else:
        (out / "linear_state.pt").write_bytes(content)
    before = snapshot(out)
    line = one_error_line("eval", "linear", "--checkpoint", ckpt, "--train", tiny_shardset, "--val", tiny_shardset,
                          "--out", out, "--epochs", "1", "--gpus", "0", "eval.batch_size=16", "data.eval_resize=40",
                          "data.eval_crop=32", code=2)
    assert "linear_state.pt" in line and "delete it" in line
    assert snapshot(out) == before


# ------------------------------------------------------------------ 7. bad labels


@pytest.mark.parametrize("bad,shown", [(9, "'9'"), ("x1", "'x1'")])
def test_bad_label_in_eval_and_train(tmp_path, photos, ckpt, bad, shown):
    labels = [0, 1, 2, 0, 1, bad, 2, 0]
    data = labelled_set(tmp_path / "bad", photos, labels)
    line = one_error_line("eval", "knn", "--checkpoint", ckpt, "--train", data, "--val", data, "--gpus", "0", code=2)
    assert "shard-000001.tar sample s0005" in line and f"label {shown}" in line
    line = one_error_line("train", "--data", data, "--out", tmp_path / "run", "--gpus", "0", "-q", *TINY, code=2)
    assert "shard-000001.tar sample s0005" in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 8. content changed, size unchanged


def test_changed_shard_of_the_same_size_is_refused(tiny_shardset, tmp_path, ckpt):
    data = tmp_path / "data"
    shutil.copytree(tiny_shardset, data)
    tar = data / "shard-000002.tar"
    raw = bytearray(tar.read_bytes())
    raw[3000] ^= 0xFF  # one byte inside a JPEG: same size, different content
    tar.write_bytes(bytes(raw))
    for args in (["train", "--data", data, "--out", tmp_path / "run", "--gpus", "0", "-q", *TINY],
                 ["eval", "knn", "--checkpoint", ckpt, "--train", data, "--val", tiny_shardset, "--gpus", "0"],
                 ["bench", "loader", data, "--steps", "1", "--warmup", "0", "--batch-size", "4"]):
        line = one_error_line(*args, code=2)
        assert "shard-000002.tar: content differs from the manifest" in line, args
    assert not (tmp_path / "run").exists()


def test_ranks_share_the_content_check(tiny_shardset, tmp_path):
    from dino_pipe.data.shardset import open_shardset
    from dino_pipe.errors import UserError

    data = tmp_path / "data"
    shutil.copytree(tiny_shardset, data)
    tar = data / "shard-000001.tar"
    raw = bytearray(tar.read_bytes())
    raw[3000] ^= 0xFF
    tar.write_bytes(bytes(raw))
    open_shardset(data, part=(0, 2))  # rank 0 of 2 checks shards 0 and 2
    with pytest.raises(UserError, match="shard-000001.tar: content differs"):
        open_shardset(data, part=(1, 2))


def test_check_sha256_is_reusable(tmp_path):
    from dino_pipe.data.shardset import check_sha256
    from dino_pipe.errors import UserError

    f = tmp_path / "x.bin"
    f.write_bytes(b"hello")
    check_sha256(f, hashlib.sha256(b"hello").hexdigest())
    with pytest.raises(UserError, match="x.bin: content differs"):
        check_sha256(f, hashlib.sha256(b"other").hexdigest())


# ------------------------------------------------------------------ 9. output paths


@pytest.mark.parametrize("case", ["train --out FILE", "viz attention --out FILE", "viz curves --out FOLDER",
                                  "shard --json FOLDER", "export --out FOLDER"])
def test_output_paths_that_cannot_be_written(tmp_path, ckpt, tree, case):
    from PIL import Image

    a_file = tmp_path / "a_file"
    a_file.write_text("mine\n")
    a_folder = tmp_path / "a_folder.safetensors"
    a_folder.mkdir()
    img = tmp_path / "img.jpg"
    Image.new("RGB", (40, 40)).save(img)
    args = {
        "train --out FILE": ["train", "--data", "synthetic:8", "--out", a_file, "--gpus", "0", "-q", *TINY],
        "viz attention --out FILE": ["viz", "attention", img, "--checkpoint", ckpt, "--out", a_file, "--device", "cpu"],
        "viz curves --out FOLDER": ["viz", "curves", ckpt.parent.parent, "--out", a_folder],
        "shard --json FOLDER": ["shard", tree, "--out", tmp_path / "shards", "--json", a_folder, "-q"],
        "export --out FOLDER": ["export", "--checkpoint", ckpt, "--out", a_folder],
    }[case]
    before = snapshot(tmp_path)
    line = one_error_line(*args, code=2)
    assert (a_file.name if "FILE" in case else a_folder.name) in line, line
    assert snapshot(tmp_path) == before  # nothing written: no shards, no hidden .tmp


# ------------------------------------------------------------------ 10. unsafe member names


def test_verify_flags_unsafe_member_names(tmp_path, photos):
    data = labelled_set(tmp_path / "set", photos, [0, 1, 2, 0])
    tar = data / "shard-000000.tar"
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    names = {0: "../../evil", 2: "/abs/evil"}
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:
        for i, (m, data_) in enumerate(members):
            key, ext = m.name.split(".", 1)
            if i // 2 in names:
                m.name = f"{names[i // 2]}.{ext}"
            t.addfile(m, io.BytesIO(data_))
    subprocess.run([str(Path(sys.executable).parent / "wds2idx"), str(tar), str(data / "shard-000000.idx")],
                   check=True, capture_output=True)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"][0].update(bytes=tar.stat().st_size, sha256=hashlib.sha256(tar.read_bytes()).hexdigest())
    (data / "manifest.json").write_text(json.dumps(manifest))
    code, output = run_cli("verify", data, "--workers", "1", "--device", "cpu", "-q")
    assert code == 1 and "Traceback" not in output
    flagged = [ln for ln in output.splitlines() if ln.startswith("bad:") and "unsafe member name" in ln]
    assert any("../../evil.jpg" in ln for ln in flagged) and any("/abs/evil.jpg" in ln for ln in flagged)


# ------------------------------------------------------------------ 11. narrow terminals


def test_tables_stay_whole_when_not_a_terminal(monkeypatch, tmp_path):
    """Piped output (80 columns by default) keeps every header and the whole status text."""
    import dino_pipe.cli as cli
    from dino_pipe.shards import writer

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(cli, "out", cli._console())  # as made at import when stdout is not a terminal
    sets = [{"split": split, "out": str(tmp_path / "imagenet-shards" / split), "status": "resumed (14 shards kept)",
             "num_samples": n, "num_classes": 1000, "shards": 1282, "bytes": 146_800_000_000, "converted": 12_345,
             "skipped": 17, "ignored": 0, "skipped_links": 0, "images_per_s": 2345.6} for split, n in
            (("train", 1_281_167), ("val", 50_000))]
    result = {"source": str(tmp_path / "a" / "rather" / "long" / "path" / "to" / "imagenet"),
              "out": str(tmp_path / "imagenet-shards"), "layout": "imagenet", "sets": sets}
    monkeypatch.setattr(writer, "shard_tree", lambda *a, **k: result)
    code, output = run_cli("shard", tmp_path, "-q")
    assert code == 0, output
    assert "…" not in output, output
    header = next(ln for ln in output.splitlines() if "samples" in ln)
    for col in ("set", "samples", "shards", "MB", "converted", "skipped", "img/s", "status"):
        assert col in header.split(), header
    assert output.count("resumed (14 shards kept)") == 2 and "1,281,167" in output
