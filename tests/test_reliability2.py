"""The second reliability probe: cases that once ended in a traceback, a silently replaced or wrong
file, or a misleading line. Each ends in one ``error:`` line (or, for a finished run, a plain note and
exit 0), with the user's files unchanged."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from conftest import write_minimal_shardset
from test_reliability import TINY, one_error_line, run_cli, snapshot

ROOT = Path(__file__).resolve().parents[1]
TINY_NO_EPOCHS = [o for o in TINY if not o.startswith("train.epochs=")]


def strict_json(path: Path):
    """Parse ``path`` refusing NaN/Infinity (what strict JSON readers do)."""
    def bad(token):
        raise ValueError(f"{path}: {token} is not JSON")
    return json.loads(path.read_text(), parse_constant=bad)


def train_args(run: Path, *extra: str, data: str | Path = "synthetic:8") -> list:
    return ["train", "--data", data, "--out", run, "--gpus", "0", "-q", *TINY, *extra]


# ------------------------------------------------------------------ 1. nothing replaced without --force


def test_export_does_not_replace_the_users_files(ckpt, tmp_path):
    out = tmp_path / "m.safetensors"
    (tmp_path / "m.json").write_text("my notes\n")  # never named on the command line
    before = snapshot(tmp_path)
    line = one_error_line("export", "--checkpoint", ckpt, "--out", out)
    assert "m.json exists (written beside m.safetensors)" in line and "--force" in line
    assert snapshot(tmp_path) == before
    (tmp_path / "m.json").unlink()
    out.write_bytes(b"mine")
    line = one_error_line("export", "--checkpoint", ckpt, "--out", out)
    assert "m.safetensors: exists" in line and "--force" in line
    assert out.read_bytes() == b"mine" and not (tmp_path / "m.json").exists()
    code, output = run_cli("export", "--checkpoint", ckpt, "--out", out, "--force")
    assert code == 0, output
    assert out.read_bytes() != b"mine" and strict_json(tmp_path / "m.json")["file"] == str(out)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` (a decompression bomb for PIL), with one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("case", ["verify --json", "viz curves --out", "viz attention --out", "eval --save-features"])
def test_named_outputs_are_not_replaced(case, tmp_path, ckpt, tiny_shardset, photos):
    from PIL import Image

    mine = tmp_path / "mine"
    mine.mkdir()
    image = tmp_path / "cat.png"
    Image.fromarray(photos[0][:64, :64]).save(image)
    args = {
        "verify --json": (["verify", tiny_shardset, "--json", mine / "r.json"], "r.json"),
        "viz curves --out": (["viz", "curves", ckpt, "--out", mine / "c.png"], "c.json"),
        "viz attention --out": (["viz", "attention", image, "--checkpoint", ckpt, "--out", mine], "cat-attention.png"),
        "eval --save-features": (["eval", "knn", "--checkpoint", ckpt, "--train", tiny_shardset, "--val",
                                  tiny_shardset, "--gpus", "0", "--save-features", mine], "val.safetensors"),
    }[case]
    cmd, existing = args
    (mine / existing).write_bytes(b"mine")
    before = snapshot(mine)
    line = one_error_line(*cmd)
    assert existing in line and "--force" in line
    assert snapshot(mine) == before
    if case == "viz attention --out":  # with --force it is replaced
        code, output = run_cli(*cmd, "--force")
        assert code == 0, output
        assert (mine / existing).read_bytes()[:4] == b"\x89PNG"


def test_json_we_write_is_strict(tmp_path):
    from dino_pipe.atomic import append_jsonl, atomic_write_json

    atomic_write_json(tmp_path / "a.json", {"loss": float("nan"), "r": [float("inf"), 1.5, -float("inf")]})
    assert strict_json(tmp_path / "a.json") == {"loss": None, "r": [None, 1.5, None]}
    append_jsonl(tmp_path / "m.jsonl", {"x": float("nan")})
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"x": None}


# ------------------------------------------------------------------ 2-3. rerun and --extend of a finished run


def test_rerun_of_a_finished_run_changes_nothing(tmp_path):
    run = tmp_path / "run"
    code, output = run_cli(*train_args(run))
    assert code == 0, output
    before = snapshot(run)
    code, output = run_cli(*train_args(run))
    assert code == 0, output
    assert "already at step 2 of 2; nothing to do, use --extend" in output
    assert snapshot(run) == before
    summary = strict_json(run / "summary.json")
    assert summary["steps_this_run"] == 2 and summary["final_loss"] is not None


def test_extend_to_no_more_steps_is_refused(tmp_path):
    run = tmp_path / "run"
    base = ["train", "--data", "synthetic:8", "--out", run, "--gpus", "0", "-q", *TINY_NO_EPOCHS]
    code, output = run_cli(*base, "--epochs", "2")
    assert code == 0, output
    before = snapshot(run)
    for epochs in ("2", "1"):
        line = one_error_line(*base, "--epochs", epochs, "--extend")
        assert "--extend" in line and "step 4" in line, line
    assert snapshot(run) == before


# ------------------------------------------------------------------ 4. images handed to viz


def test_viz_attention_images_get_the_shard_checks(tmp_path, ckpt):
    bomb = _png_header_only(tmp_path / "huge.png", 30000, 30000)
    line = one_error_line("viz", "attention", bomb, "--checkpoint", ckpt, "--out", tmp_path / "out")
    assert "huge.png: not a usable image (too large to decode safely" in line
    garbage = tmp_path / "notes.jpg"
    garbage.write_bytes(b"\xff\xd8\xff" + b"\0" * 100)
    line = one_error_line("viz", "attention", garbage, "--checkpoint", ckpt, "--out", tmp_path / "out")
    assert "notes.jpg: not a usable image" in line
    assert not (tmp_path / "out").exists()


def test_two_images_drawn_to_one_png_are_refused(tmp_path, ckpt, photos):
    from PIL import Image

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.fromarray(photos[0][:64, :64]).save(tmp_path / d / "x.png")
    line = one_error_line("viz", "attention", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png",
                          "--checkpoint", ckpt, "--out", tmp_path / "out")
    assert "x-attention.png" in line and "rename one" in line


# ------------------------------------------------------------------ 6-7. presets


@pytest.mark.parametrize("text,shown", [
    ("data:\n  batch_size: 4\ntrain:\n  epochs: 1\ndata:\n  n_local: 2\n", "key 'data' given twice (lines 1 and 5)"),
    ("model:\n  out_dim: 64\n  out_dim: 32\n", "key 'out_dim' given twice (lines 2 and 3)"),
    ("", "empty"),
    ("# only a comment\n", "empty"),
])
def test_bad_presets_are_refused(tmp_path, text, shown):
    preset = tmp_path / "p.yaml"
    preset.write_text(text)
    line = one_error_line("train", "--config", preset, "--data", "synthetic:8", "--out", tmp_path / "run",
                          "--gpus", "0", "-q")
    assert "p.yaml" in line and shown in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 8. swapped .idx files


def test_swapped_index_files_are_named(tmp_path, tiny_shardset, ckpt):
    data = tmp_path / "data"
    shutil.copytree(tiny_shardset, data)
    a, b = data / "shard-000000.idx", data / "shard-000001.idx"
    text_a, text_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(text_b)
    b.write_bytes(text_a)
    line = one_error_line("eval", "knn", "--checkpoint", ckpt, "--train", data, "--val", data, "--gpus", "0", code=2)
    assert "index shard-000000.idx does not match shard-000000.tar" in line and "label" not in line


def test_swapped_index_files_of_an_unlabelled_set(tmp_path, tiny_shardset):
    data = tmp_path / "data"
    shutil.copytree(tiny_shardset, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest.update(classes=[], labeled=False)
    (data / "manifest.json").write_text(json.dumps(manifest))
    a, b = data / "shard-000001.idx", data / "shard-000002.idx"
    text_a, text_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(text_b)
    b.write_bytes(text_a)
    line = one_error_line(*train_args(tmp_path / "run", data=data), code=2)
    assert "index shard-000001.idx does not match shard-000001.tar" in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 9-10. one writer per output folder

_HOLD = """
import sys, time
from dino_pipe.lock import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold_lock(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_and_a_killed_one_does_not_block(tmp_path, tree):
    run, shards = tmp_path / "run", tmp_path / "shards"
    holders = [_hold_lock(run), _hold_lock(shards)]
    try:
        line = one_error_line(*train_args(run))
        assert f"--out {run} is being written by another run (pid {holders[0].pid} on" in line
        assert "dino-pipe" in line and "since" in line
        line = one_error_line("shard", tree, "--out", shards, "-q")
        assert f"pid {holders[1].pid}" in line
        assert not (shards / "manifest.json").exists() and not (run / "checkpoints").exists()
    finally:
        for p in holders:
            os.kill(p.pid, signal.SIGKILL)  # a killed holder leaves its lock file behind
            p.wait()
    assert (run / ".dino-pipe.lock").exists()
    code, output = run_cli(*train_args(run))
    assert code == 0, output
    code, output = run_cli("shard", tree, "--out", shards, "-q")
    assert code == 0, output
    assert not (run / ".dino-pipe.lock").exists() and not (shards / ".dino-pipe.lock").exists()


def test_lock_released_on_exit(tmp_path):
    from dino_pipe.errors import UserError
    from dino_pipe.lock import output_lock

    folder = tmp_path / "out"
    with output_lock(folder):
        with pytest.raises(UserError, match="is being written by another run"):
            with output_lock(folder):
                pass
    assert not folder.exists()  # created by the lock, left empty: removed
    start = time.time()
    with output_lock(folder):
        pass
    assert time.time() - start < 5


# ------------------------------------------------------------------ 12-13. not a checkpoint


@pytest.mark.parametrize("name,content", [("notes.txt", b"my notes\n"), ("cat.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)])
def test_a_file_that_is_not_a_checkpoint(tmp_path, tiny_shardset, name, content):
    f = tmp_path / name
    f.write_bytes(content)
    for args in (["eval", "knn", "--checkpoint", f, "--train", tiny_shardset, "--val", tiny_shardset, "--gpus", "0"],
                 ["export", "--checkpoint", f, "--out", tmp_path / "m.safetensors"]):
        line = one_error_line(*args)
        assert f"{name}: not a checkpoint" in line, line
        assert "weights_only" not in line and "--out" not in line


def test_a_damaged_checkpoint_read_by_eval_does_not_talk_about_resuming(tmp_path, tiny_shardset, ckpt):
    torn = tmp_path / "torn.pt"
    torn.write_bytes(ckpt.read_bytes()[:1000])
    line = one_error_line("eval", "knn", "--checkpoint", torn, "--train", tiny_shardset, "--val", tiny_shardset,
                          "--gpus", "0")
    assert "damaged or unreadable checkpoint" in line and "give another checkpoint" in line
    assert "--out" not in line


# ------------------------------------------------------------------ 14. resuming on other data


def test_resume_on_other_data_is_refused(tmp_path, tiny_shardset, photos):
    from PIL import Image

    from dino_pipe.sample_data import photo_crops

    run = tmp_path / "run"
    code, output = run_cli(*train_args(run, "train.max_steps=1", data=tiny_shardset))
    assert code == 0, output
    samples = []
    for i, a in enumerate(photo_crops(photos, 96, seed=7)):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=80)
        samples.append((f"s{i:05d}", buf.getvalue(), i % 4))
    other = write_minimal_shardset(tmp_path / "other", samples, 32, [f"class_{c:02d}" for c in range(4)])
    before = snapshot(run)
    line = one_error_line(*train_args(run, "train.max_steps=2", data=other))
    assert "was trained on other data" in line and "resume with the data it was trained on, or use a new --out" in line
    assert snapshot(run) == before
    moved = tmp_path / "moved"  # the same set elsewhere (as a fetch from s3:// into the cache gives): accepted
    shutil.copytree(tiny_shardset, moved)
    code, output = run_cli(*train_args(run, "train.max_steps=2", data=moved))
    assert code == 0, output
    last = sorted((run / "checkpoints").iterdir())[-1]
    state = torch.load(last, weights_only=True)
    state.pop("data_identity")  # a checkpoint written before the data identity was recorded
    torch.save(state, last)
    code, output = run_cli(*train_args(run, "train.max_steps=3", data=other))
    assert code == 0, output


# ------------------------------------------------------------------ 15. a torchrun job restarted after a lost rank

_FAULTY_RANK = """
import os, signal, sys
from dino_pipe.train import checkpoint as C

if os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0" and os.environ.get("RANK") == "1":
    save = C.CheckpointManager.save

    def save_then_die(self, trainer, loader, step, steps_per_epoch):
        save(self, trainer, loader, step, steps_per_epoch)
        if step >= 2:  # the process is lost right after the checkpoint of step 2
            os.kill(os.getpid(), signal.SIGKILL)

    C.CheckpointManager.save = save_then_die
from dino_pipe.cli import main

sys.argv = ["dino-pipe", *sys.argv[1:]]
main()
"""


def _torchrun(script: Path, run: Path) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "--max-restarts", "1", str(script),
           "train", "--data", "synthetic:32", "--out", str(run), "--gpus", "0", "-q", *TINY,
           "train.checkpoint_every_steps=2"]  # 2 ranks x batch 4: 4 steps per epoch
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_torchrun_restart_after_a_lost_rank_equals_an_uninterrupted_run(tmp_path):
    if not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("no torchrun beside this python")
    script = tmp_path / "faulty_rank.py"
    script.write_text(_FAULTY_RANK)
    plain = tmp_path / "plain.py"
    plain.write_text("import sys\nfrom dino_pipe.cli import main\nsys.argv = ['dino-pipe', *sys.argv[1:]]\nmain()\n")
    full, restarted = tmp_path / "full", tmp_path / "restarted"
    res = _torchrun(plain, full)
    assert res.returncode == 0, res.stderr[-3000:]
    res = _torchrun(script, restarted)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"resumed_from"' in res.stdout and "step-00000002.pt" in res.stdout, res.stdout[-2000:]
    a = torch.load(full / "checkpoints" / "step-00000004.pt", weights_only=True)
    b = torch.load(restarted / "checkpoints" / "step-00000004.pt", weights_only=True)
    for part in ("student", "teacher"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k}"
    assert torch.equal(a["objective"]["dino.center"], b["objective"]["dino.center"])
    assert not (restarted / ".dino-pipe.lock").exists()
