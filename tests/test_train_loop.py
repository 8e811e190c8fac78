"""The training loop end to end on the CPU: run dir, exact resume after kill -9, NaN stop, real shards,
and the one-line user errors of the CLI."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kill_helpers import kill_after_step
from typer.testing import CliRunner

from dino_pipe.atomic import read_jsonl
from dino_pipe.config import load_config
from dino_pipe.errors import UserError
from dino_pipe.train import load_checkpoint
from dino_pipe.train.loop import train

TINY = [
    "model.arch=vit_tiny_patch16_224",
    "model.arch_kwargs={img_size: 32, patch_size: 8, depth: 1}",
    "model.out_dim=64",
    "model.hidden_dim=32",
    "model.bottleneck_dim=16",
    "data.batch_size=4",
    "data.global_size=32",
    "data.local_size=16",
    "data.n_local=2",
    "optim.warmup_epochs=1",
    "train.log_every_steps=1",
    "train.collapse_check_every_steps=2",
    "train.cpu_threads=1",
]


def tiny_cfg(*extra: str):
    return load_config(None, TINY + list(extra))


def test_run_dir_layout_checkpoints_and_resume(tmp_path):
    cfg = tiny_cfg("train.epochs=2", "train.checkpoint_every_steps=3", "train.keep_checkpoints=2", "train.max_steps=5")
    s = train(cfg, "synthetic:32", tmp_path, gpus=0, progress=False)  # 8 steps per epoch
    assert s["steps"] == 5 and s["last_checkpoint"].endswith("step-00000005.pt") and s["world_size"] == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000003.pt", "step-00000005.pt"]
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "summary.json").is_file()
    m = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in m] == [1, 2, 3, 4, 5]
    for key in ("loss", "lr", "wd", "momentum", "teacher_temp", "images_per_s", "data_wait_pct", "grad_norm"):
        assert key in m[-1]
    assert (
        "teacher_entropy" in m[1]
        and "prototypes_used" in m[1]
        and m[1]["teacher_entropy_max"] == pytest.approx(4.1589, 1e-3)
    )
    ck = load_checkpoint(tmp_path)
    assert ck["step"] == 5 and ck["data"] == {"epoch": 0, "step": 5} and ck["objective"]["dino.center"].shape == (1, 64)
    assert not torch.equal(ck["student"]["head.mlp.0.weight"], ck["teacher"]["head.mlp.0.weight"])

    cfg2 = tiny_cfg(
        "train.epochs=2", "train.checkpoint_every_steps=3", "train.keep_checkpoints=2", "train.max_steps=10"
    )
    s2 = train(cfg2, "synthetic:32", tmp_path, gpus=0, progress=False)
    assert s2["resumed_from"].endswith("step-00000005.pt") and s2["steps"] == 10 and s2["steps_this_run"] == 5
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == list(range(1, 11))
    # epoch end (step 8) was checkpointed; the schedule crossed into epoch 1
    assert load_checkpoint(tmp_path)["epoch"] == 1

    with pytest.raises(UserError, match="different config.*optim.base_lr"):
        train(tiny_cfg("train.epochs=2", "optim.base_lr=0.1"), "synthetic:32", tmp_path, gpus=0, progress=False)


def _cli(run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dino_pipe",
        "train",
        "--data",
        "synthetic:48",
        "--out",
        str(run_dir),
        "--gpus",
        "0",
        "-q",
        *TINY,
        "train.epochs=2",
        "train.checkpoint_every_steps=2",
        "model.drop_path=0.1",
        *extra,
    ]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


# end to end: two CLI trainings in subprocesses, one killed; in-process exact resume is tested by
# test_real_shards_through_viewloader_and_exact_resume
@pytest.mark.slow
def test_exact_resume_after_kill9(tmp_path):
    """kill -9 at a random step, rerun the same command: the final weights equal an uninterrupted run's."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cli(full), check=True, env=_env(), capture_output=True, timeout=300)
    kill_at = random.Random(os.getpid()).randint(5, 19)  # 24 steps in total
    kill_after_step(_cli(killed), _env(), killed, kill_at)
    before = load_checkpoint(killed)["step"]
    assert before < 24
    res = subprocess.run(_cli(killed), env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    a, b = load_checkpoint(full), load_checkpoint(killed)
    assert a["step"] == b["step"] == 24
    for part in ("student", "teacher"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k} differs after resume (killed at step ~{kill_at})"
    assert torch.equal(a["objective"]["dino.center"], b["objective"]["dino.center"])
    assert [r["step"] for r in read_jsonl(killed / "metrics.jsonl")] == list(range(1, 25))
    for ra, rb in zip(read_jsonl(full / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")):
        assert ra["loss"] == rb["loss"]


def test_nonfinite_loss_stops_and_overwrites_nothing(tmp_path, monkeypatch):
    from dino_pipe.models import DINOModel

    cfg = tiny_cfg("train.epochs=1", "train.checkpoint_every_steps=2")
    real_forward = DINOModel.forward
    calls = {"student": 0}

    def poisoned(self, views):
        out = real_forward(self, views)
        if len(views) > 2:  # the student sees all 4 crops, the teacher the 2 globals
            calls["student"] += 1
            if calls["student"] == 5:
                out = out * float("nan")
        return out

    monkeypatch.setattr(DINOModel, "forward", poisoned)
    with pytest.raises(UserError) as e:
        train(cfg, "synthetic:32", tmp_path, gpus=0, progress=False)
    msg = str(e.value)
    assert "step 5" in msg and "nan" in msg and "student output" in msg and "step-00000004.pt" in msg
    assert e.value.exit_code != 0
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "checkpoints").iterdir()}
    assert sorted(files) == ["step-00000002.pt", "step-00000004.pt"]
    assert not (tmp_path / "summary.json").exists()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    ck = load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in ck["student"].values())


def test_real_shards_through_viewloader_and_exact_resume(tmp_path, tiny_shardset):
    """A few steps on real JPEG shards through the DALI ViewLoader; stop + resume = straight run."""
    base = ["train.epochs=2", "data.batch_size=16", "train.checkpoint_every_steps=2", "model.drop_path=0.1"]
    straight = train(tiny_cfg(*base, "train.max_steps=5"), tiny_shardset, tmp_path / "a", gpus=0, progress=False)
    assert straight["steps"] == 5
    train(tiny_cfg(*base, "train.max_steps=3"), tiny_shardset, tmp_path / "b", gpus=0, progress=False)
    resumed = train(tiny_cfg(*base, "train.max_steps=5"), tiny_shardset, tmp_path / "b", gpus=0, progress=False)
    assert resumed["resumed_from"].endswith("step-00000003.pt")
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["data"]["epoch"] == b["data"]["epoch"] and a["data"]["step"] == b["data"]["step"]
    for k, v in a["student"].items():
        assert torch.equal(v, b["student"][k]), k
    la = [r["loss"] for r in read_jsonl(tmp_path / "a" / "metrics.jsonl")]
    lb = [r["loss"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")]
    assert la == lb and all(torch.isfinite(torch.tensor(la)))


def test_cli_user_errors_are_one_line(tmp_path, tiny_shardset):
    from dino_pipe.cli import app

    runner = CliRunner()
    cases = [
        (
            ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--gpus", "0"],
            "no such shard set",
        ),
        (
            ["train", "--data", "synthetic:8", "--out", str(tmp_path / "r"), "--gpus", "0", "model.nope=1"],
            "unknown config key",
        ),
        (
            ["train", "--data", "synthetic:8", "--out", str(tmp_path / "r"), "--gpus", "0", "optim.clip_mode=foo"],
            "optim.clip_mode",
        ),
        (
            [
                "train",
                "--data",
                str(tiny_shardset),
                "--out",
                str(tmp_path / "r"),
                "--gpus",
                "0",
                "data.batch_size=1000",
            ],
            "batch",
        ),
    ]
    if not torch.cuda.is_available():
        cases.append(
            (["train", "--data", "synthetic:8", "--out", str(tmp_path / "r"), "--gpus", "2"], "--gpus 2 requested")
        )
    for args, needle in cases:
        res = runner.invoke(app, args)
        text = res.output
        assert res.exit_code != 0, (args, text)
        assert needle in text, (args, text)
        assert "Traceback" not in text and text.strip().count("\n") <= 2, text


def test_steps_between_logs_run_without_sync_and_still_resume_exactly(tmp_path, monkeypatch):
    """log every 4 steps: the steps between call DINOTrainer.step(sync=False); stop + resume = straight run."""
    from dino_pipe.train.trainer import DINOTrainer

    syncs = []
    real_step = DINOTrainer.step

    def spy(self, views, step, *, sync=True):
        syncs.append((step + 1, sync))
        return real_step(self, views, step, sync=sync)

    monkeypatch.setattr(DINOTrainer, "step", spy)
    base = [
        "train.epochs=2",
        "train.log_every_steps=4",
        "train.collapse_check_every_steps=4",
        "train.checkpoint_every_steps=0",
        "model.drop_path=0.1",
    ]
    train(tiny_cfg(*base, "train.max_steps=10"), "synthetic:32", tmp_path / "a", gpus=0, progress=False)
    assert [n for n, s in syncs if s] == [4, 8, 10]  # 8 is also the epoch end (8 steps per epoch)
    train(tiny_cfg(*base, "train.max_steps=6"), "synthetic:32", tmp_path / "b", gpus=0, progress=False)
    train(tiny_cfg(*base, "train.max_steps=10"), "synthetic:32", tmp_path / "b", gpus=0, progress=False)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for part in ("student", "teacher"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), k
    assert torch.equal(a["objective"]["dino.center"], b["objective"]["dino.center"])
    la = {r["step"]: r["loss"] for r in read_jsonl(tmp_path / "a" / "metrics.jsonl")}
    lb = {r["step"]: r["loss"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")}
    assert sorted(la) == [4, 8, 10] and sorted(lb) == [4, 6, 8, 10]  # b also logged its stop at step 6
    assert all(la[k] == lb[k] for k in la)


def test_nonfinite_loss_between_logs_is_caught_before_the_next_checkpoint(tmp_path, monkeypatch):
    from dino_pipe.models import DINOModel

    cfg = tiny_cfg(
        "train.epochs=1",
        "train.log_every_steps=4",
        "train.collapse_check_every_steps=4",
        "train.checkpoint_every_steps=4",
    )
    real_forward = DINOModel.forward
    calls = {"student": 0}

    def poisoned(self, views):
        out = real_forward(self, views)
        if len(views) > 2:
            calls["student"] += 1
            if calls["student"] == 5:  # step 5 runs without a sync; step 8 is the next sync step
                out = out * float("inf")
        return out

    monkeypatch.setattr(DINOModel, "forward", poisoned)
    with pytest.raises(UserError) as e:
        train(cfg, "synthetic:32", tmp_path, gpus=0, progress=False)
    msg = str(e.value)
    assert "at step 5" in msg and "step-00000004.pt" in msg, msg
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000004.pt"]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [4]
    assert not (tmp_path / "summary.json").exists()
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path)["student"].values())


def test_extend_a_finished_run_to_more_epochs(tmp_path, capsys):
    s = train(tiny_cfg("train.epochs=1"), "synthetic:16", tmp_path, gpus=0, progress=False)  # 4 steps per epoch
    assert s["steps"] == 4
    with pytest.raises(UserError, match="add --extend"):
        train(tiny_cfg("train.epochs=2"), "synthetic:16", tmp_path, gpus=0, progress=False)
    with pytest.raises(UserError, match="different config.*optim.base_lr"):  # --extend allows epochs only
        train(
            tiny_cfg("train.epochs=2", "optim.base_lr=0.1"),
            "synthetic:16",
            tmp_path,
            gpus=0,
            progress=False,
            extend=True,
        )
    s2 = train(tiny_cfg("train.epochs=2"), "synthetic:16", tmp_path, gpus=0, progress=False, extend=True)
    assert s2["steps"] == 8 and s2["steps_this_run"] == 4 and s2["resumed_from"].endswith("step-00000004.pt")
    assert "from 1 to 2 epochs" in capsys.readouterr().err
    m = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in m] == list(range(1, 9))
    # the lr schedule was recomputed for 2 epochs: step 5 is past the 1-epoch warm-up, on the new cosine
    from dino_pipe.train.schedules import Schedules

    sched = Schedules.from_config(tiny_cfg("train.epochs=2"), 4, 4)
    assert m[5]["lr"] == pytest.approx(sched.at(5)["lr"])
    with pytest.raises(UserError, match="beyond 1 epochs"):
        train(tiny_cfg("train.epochs=1"), "synthetic:16", tmp_path, gpus=0, progress=False, extend=True)


def test_cli_epochs_batch_size_shortcuts_and_parent_data_folder(tmp_path, tiny_shardset):
    from dino_pipe.cli import app

    parent = tmp_path / "shards"
    parent.mkdir()
    (parent / "train").symlink_to(tiny_shardset, target_is_directory=True)
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(parent),
            "--out",
            str(tmp_path / "r"),
            "--gpus",
            "0",
            "-q",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            *[t for t in TINY if "batch_size" not in t],
            "train.max_steps=1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"training on {parent / 'train'}" in res.output
    cfg = load_checkpoint(tmp_path / "r")["config"]
    assert cfg["train"]["epochs"] == 1 and cfg["data"]["batch_size"] == 4
    (parent / "train").unlink()
    (parent / "val").symlink_to(tiny_shardset, target_is_directory=True)
    res = CliRunner().invoke(app, ["train", "--data", str(parent), "--out", str(tmp_path / "r2"), "--gpus", "0"])
    assert res.exit_code != 0 and "holds the shard sets val" in res.output and "Traceback" not in res.output


def test_online_knn_logs_step0_and_epochs_and_warns_when_below_step0(tmp_path, tiny_shardset, monkeypatch):
    """k-NN of the teacher at step 0 and each epoch end goes to metrics.jsonl; a value below step 0 warns once per
    measurement, naming both numbers."""
    from dino_pipe.eval.online_knn import OnlineKnn, training_probe

    real = OnlineKnn.measure
    calls = []

    def measure(self, backbone):
        m = real(self, backbone)
        assert 0.0 <= m["knn_top1"] <= 100.0 and m["knn_k"] == 5
        calls.append(m["knn_top1"])
        return {**m, "knn_top1": 50.0 - 10 * (len(calls) - 1)}  # 50 at step 0, then lower: must warn

    monkeypatch.setattr(OnlineKnn, "measure", measure)
    knn = [
        f"eval.online_knn_train={tiny_shardset}",
        f"eval.online_knn_val={tiny_shardset}",
        "eval.online_knn_k=5",
        "data.eval_resize=32",
        "data.eval_crop=32",
    ]
    cfg = tiny_cfg("train.epochs=2", "data.batch_size=16", *knn)
    s = train(cfg, tiny_shardset, tmp_path, gpus=0, progress=False, online_knn=training_probe)
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "knn_top1" in r]
    assert [r["step"] for r in records] == [0, s["steps"] // 2, s["steps"]] and len(calls) == 3
    assert records[0]["knn_warning"] is None
    assert "below the untrained network's 50.0%" in records[1]["knn_warning"]
    assert "40.0%" in records[1]["knn_warning"] and "30.0%" in records[2]["knn_warning"]
    pytest.importorskip("matplotlib")
    from dino_pipe.eval.curves import plot_curves

    drawn = plot_curves(tmp_path, tmp_path / "curves.png")  # online k-NN next to loss and entropy
    assert [p["top1"] for p in drawn["online_knn"]] == [50.0, 40.0, 30.0] and (
        tmp_path / "curves.png"
    ).stat().st_size > 0


def test_partial_collapse_warning_fires_for_a_collapsing_config_only(tmp_path):
    """A teacher far too sharp (temperature 0.002) with centering almost off (momentum 0.999) and a high lr puts the
    64 images of each check window on 8-16 of 64 prototypes: the partial-collapse warning fires and names the
    numbers; the default temperatures keep the teacher spread and it stays silent."""
    base = ["train.max_steps=24", "data.batch_size=8", "train.collapse_check_every_steps=4", "train.epochs=3"]
    train(
        tiny_cfg(
            *base,
            "loss.teacher_temp=0.002",
            "loss.warmup_teacher_temp=0.002",
            "loss.center_momentum=0.999",
            "optim.base_lr=0.02",
        ),
        "synthetic:64",
        tmp_path / "sharp",
        gpus=0,
        progress=False,
    )
    sharp = [r.get("partial_collapse_warning") for r in read_jsonl(tmp_path / "sharp" / "metrics.jsonl")]
    fired = [w for w in sharp if w]
    assert fired and "prototypes" in fired[0] and "teacher_temp" in fired[0]
    train(tiny_cfg(*base), "synthetic:64", tmp_path / "ok", gpus=0, progress=False)
    ok = [r for r in read_jsonl(tmp_path / "ok" / "metrics.jsonl") if "teacher_entropy" in r]
    assert ok and not any(r.get("partial_collapse_warning") for r in ok)
