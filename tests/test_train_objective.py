"""The objective inside training: its named terms in every sink, checkpoints of the old layout resuming, and the
recipe's number of global views driving the loader, the trainer and the loss."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from test_train_loop import TINY

from dino_pipe.atomic import read_jsonl
from dino_pipe.config import load_config
from dino_pipe.train import load_checkpoint
from dino_pipe.train.loop import train

THREE_GLOBALS = ["data.blur_p_global=[1.0, 0.1, 0.5]", "data.solarize_p_global=[0.0, 0.2, 0.0]"]


def test_cpu_small_metrics_carry_the_dino_and_koleo_terms_beside_the_total(tmp_path):
    cfg = load_config("cpu_small", ["data.batch_size=8", "train.epochs=1", "train.max_steps=4",
                                    "train.log_every_steps=1", "train.cpu_threads=1"])
    assert cfg.loss.koleo_weight > 0
    train(cfg, "synthetic:64", tmp_path, gpus=0, progress=False)
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert math.isfinite(r["loss_dino"]) and math.isfinite(r["loss_koleo"])
        assert r["loss"] == pytest.approx(r["loss_dino"] + cfg.loss.koleo_weight * r["loss_koleo"], rel=1e-6)
    assert len({r["loss_koleo"] for r in records}) > 1  # measured each step, not a constant


def _as_old_layout(path) -> None:
    """Rewrite a checkpoint file as the trainer wrote it before the objective owned its state (top-level "center")."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["center"] = state.pop("objective")["dino.center"]
    torch.save(state, path)


def test_a_checkpoint_of_the_old_layout_resumes_with_identical_state(tmp_path):
    base = ["train.epochs=1", "train.checkpoint_every_steps=3"]
    train(load_config(None, TINY + base + ["train.max_steps=6"]), "synthetic:32", tmp_path / "a", gpus=0,
          progress=False)
    first = train(load_config(None, TINY + base + ["train.max_steps=3"]), "synthetic:32", tmp_path / "b", gpus=0,
                  progress=False)
    _as_old_layout(first["last_checkpoint"])
    raw = torch.load(first["last_checkpoint"], map_location="cpu", weights_only=True)
    assert "objective" not in raw and raw["center"].shape == (1, 64)
    centre = load_checkpoint(first["last_checkpoint"])["objective"]["dino.center"]  # the key mapping
    assert torch.equal(centre, raw["center"])
    resumed = train(load_config(None, TINY + base + ["train.max_steps=6"]), "synthetic:32", tmp_path / "b", gpus=0,
                    progress=False)
    assert resumed["resumed_from"].endswith("step-00000003.pt") and resumed["steps"] == 6
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for part in ("student", "teacher"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k}"
    assert torch.equal(a["objective"]["dino.center"], b["objective"]["dino.center"])
    la = [(r["loss"], r["loss_dino"]) for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    lb = [(r["loss"], r["loss_dino"]) for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if "loss" in r]
    assert la == lb and len(la) == 6
    assert all("loss_koleo" not in r for r in read_jsonl(tmp_path / "a" / "metrics.jsonl"))  # weight 0: off


class _Board:
    """Stands in for TensorBoard's SummaryWriter: the scalars written."""

    def __init__(self):
        self.tags: dict[str, float] = {}

    def add_scalar(self, tag, value, step):
        self.tags[tag] = value

    def close(self):
        pass


def test_every_loss_term_reaches_jsonl_tensorboard_and_the_progress_line(tmp_path, monkeypatch):
    from dino_pipe.distributed import DistEnv
    from dino_pipe.train.metrics import MetricsLogger
    from dino_pipe.train.sinks import TensorBoardSink

    board = _Board()
    monkeypatch.setattr(MetricsLogger, "_tensorboard", lambda self: TensorBoardSink(board))
    cfg = load_config(None, TINY)
    res = SimpleNamespace(loss=torch.tensor(5.25), grad_norm=torch.tensor(1.0),
                          terms={"loss_dino": torch.tensor(5.0), "loss_koleo": torch.tensor(2.5),
                                 "loss_ibot": torch.tensor(0.125)},
                          teacher_probs=torch.full((8, 64), 1 / 64),
                          values={"lr": 1e-4, "wd": 0.04, "momentum": 0.996, "teacher_temp": 0.04})
    with MetricsLogger(tmp_path, cfg, DistEnv(device="cpu"), 10, 10, 0, show_progress=False) as m:
        m.after_step(1, res, True, False)
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert (record["loss"], record["loss_dino"], record["loss_koleo"], record["loss_ibot"]) == (5.25, 5.0, 2.5, 0.125)
    assert {"train/loss", "train/loss_dino", "train/loss_koleo", "train/loss_ibot"} <= set(board.tags)
    assert "loss 5.2500 (dino 5.0000 koleo 2.5000 ibot 0.1250)" in m.line.logged


def test_the_recipes_global_count_drives_loader_trainer_and_loss(tiny_shardset, tmp_path):
    from dino_pipe.data.loader import ViewLoader
    from dino_pipe.data.recipe import multicrop_recipe, n_global_views
    from dino_pipe.data.stream_loader import StreamViewLoader
    from dino_pipe.data.synthetic import SyntheticViewLoader
    from dino_pipe.distributed import DistEnv
    from dino_pipe.objective import DINOLoss
    from dino_pipe.storage.cache import CacheSettings
    from dino_pipe.train.trainer import DINOTrainer

    cfg = load_config(None, TINY + THREE_GLOBALS + ["loss.koleo_weight=0.5"])
    specs = multicrop_recipe(cfg.data)
    assert n_global_views(specs) == 3 and [s.is_global for s in specs] == [True, True, True, False, False]
    assert [s.blur_p for s in specs[:3]] == [1.0, 0.1, 0.5]

    batch = next(iter(ViewLoader(tiny_shardset, cfg.data)))
    assert [v.shape[-1] for v in batch.views] == [32, 32, 32, 16, 16]
    stream = StreamViewLoader(str(tiny_shardset), cfg.data, settings=CacheSettings.resolve(str(tmp_path), gb=1.0))
    try:
        assert stream.n_local == 2
        assert [v.shape[-1] for v in next(iter(stream)).views] == [32, 32, 32, 16, 16]
    finally:
        stream.close()
    views = next(iter(SyntheticViewLoader(cfg.data, num_samples=8))).views
    assert [v.shape[-1] for v in views] == [32, 32, 32, 16, 16]

    trainer = DINOTrainer(cfg, DistEnv(device="cpu"), 100)
    assert trainer.objective.dino.n_teacher_views == 3 == trainer.n_global
    with torch.no_grad():
        teacher_out = trainer.teacher(views[:3])
        student_out, embed = trainer.student(views, return_embed=True)
    tau = trainer.schedules.at(0)["teacher_temp"]
    want_dino = DINOLoss(64, n_teacher_views=3)(student_out, teacher_out, tau, update_center=False)
    res = trainer.step(views, 0)
    assert res.teacher_probs.shape == (3 * 4, 64)
    assert float(res.terms["loss_dino"]) == pytest.approx(float(want_dino), abs=1e-5)
    from dino_pipe.objective.koleo import koleo_loss

    want_koleo = sum(koleo_loss(e) for e in embed[:12].chunk(3))
    assert float(res.terms["loss_koleo"]) == pytest.approx(float(want_koleo), abs=1e-5)


def test_global_crop_settings_must_agree():
    from dino_pipe.errors import UserError

    with pytest.raises(UserError, match="data.blur_p_global"):
        load_config(None, ["data.blur_p_global=[1.0, 0.1, 0.5]"])  # solarize_p_global still has 2 entries
    with pytest.raises(UserError, match="data.blur_p_global"):
        load_config(None, ["data.blur_p_global=[1.0]", "data.solarize_p_global=[0.0]", "data.n_local=0"])
