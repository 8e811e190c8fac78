"""The metrics of a run, component by component: the record of a step (named loss terms included), the sinks,
the progress line, the collapse check's windows, and the online k-NN handed down as a hook."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dino_pipe.atomic import read_jsonl
from dino_pipe.errors import UserError
from dino_pipe.train.diagnostics import CollapseCheck
from dino_pipe.train.knn_hook import OnlineKnnWatch
from dino_pipe.train.metrics import step_values
from dino_pipe.train.sinks import JsonlSink, ProgressLine, TensorBoardSink, loss_terms_text

VALUES = {"lr": 1e-3, "wd": 0.04, "momentum": 0.996, "teacher_temp": 0.04}


def _result(**extra):
    return SimpleNamespace(loss=torch.tensor(5.25), grad_norm=torch.tensor(1.5), teacher_probs=None,
                           values=dict(VALUES), **extra)


def test_a_step_record_carries_every_named_loss_term():
    assert step_values(_result()) == {"loss": 5.25, **VALUES, "grad_norm": 1.5}  # as before: no terms, no keys
    with_terms = step_values(_result(terms={"loss_dino": torch.tensor(5.0), "loss_koleo": torch.tensor(0.5)}))
    assert list(with_terms)[:3] == ["loss", "loss_dino", "loss_koleo"] and with_terms["loss_koleo"] == 0.5
    in_values = _result()
    in_values.values["loss_ibot"] = torch.tensor(2.0)
    assert step_values(in_values)["loss_ibot"] == 2.0 and list(step_values(in_values))[1] == "loss_ibot"
    assert step_values(_result(loss_dino=torch.tensor(4.0)))["loss_dino"] == 4.0


class _Writer:
    def __init__(self):
        self.scalars, self.closed = [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


def test_the_sinks_write_what_they_receive(tmp_path):
    record = {"step": 7, "epoch": 0.5, "loss": 5.25, "loss_dino": 5.0, "lr": 1e-3, "collapse_warning": None,
              "time": 123.0}
    jsonl = JsonlSink(tmp_path / "metrics.jsonl")
    jsonl.write(record)
    jsonl.write({**record, "step": 8})
    assert read_jsonl(tmp_path / "metrics.jsonl") == [record, {**record, "step": 8}]
    tb = TensorBoardSink(_Writer())
    tb.write(record)
    tb.close()
    assert tb.writer.scalars == [("train/epoch", 0.5, 7), ("train/loss", 5.25, 7), ("train/loss_dino", 5.0, 7),
                                 ("train/lr", 1e-3, 7)] and tb.writer.closed


def test_the_progress_line_text():
    line = ProgressLine(total=20, completed=0, steps_per_epoch=10, show=False)
    assert line.text(3) == "ep 0.30/2"
    record = {"step": 4, "loss": 5.25, **VALUES, "images_per_s": 123.4, "data_wait_pct": 3.2}
    line.write(record)
    line.show_knn(" | k-NN 41.0%")
    assert line.text(5) == ("ep 0.50/2 | step 4: loss 5.2500 lr 1.00e-03 wd 0.040 m 0.9960 τt 0.040 123 img/s wait 3%"
                            " | k-NN 41.0%")
    line.write({**record, "loss_dino": 5.0, "loss_koleo": 0.25})
    assert "loss 5.2500 (dino 5.0000 koleo 0.2500) lr" in line.text(5)
    assert loss_terms_text({"loss": 1.0, "loss_x": "n/a"}) == ""


def test_the_collapse_check_counts_its_window_and_warns_once_per_episode():
    warnings = []
    check = CollapseCheck(64, lambda step, text: warnings.append((step, text)))
    assert check.check(1) == {}  # nothing observed yet
    uniform = torch.full((8, 64), 1 / 64)
    for step in (1, 2, 3):
        check.observe(uniform)
        assert check.window_outputs == 8  # teacher outputs since the last check (each check starts a window)
        stats = check.check(step)
        assert check.window_outputs == 0 and "near uniform" in stats["collapse_warning"]
    assert [s for s, _ in warnings] == [1]  # the episode goes on: one warning
    peaked = torch.zeros(8, 64)
    peaked[torch.arange(8), torch.arange(8)] = 1.0
    check.observe(peaked)
    assert check.check(4)["collapse_warning"] is None
    check.observe(uniform)
    check.check(5)
    assert [s for s, _ in warnings] == [1, 5]  # a new episode warns again


class _Probe:
    def __init__(self, values):
        self.values, self.closed, self.seen = list(values), False, []

    def due(self, step, steps_per_epoch, last_step):
        return step % steps_per_epoch == 0 or step == last_step

    def measure(self, backbone):
        self.seen.append(backbone)
        return {"knn_top1": self.values.pop(0), "knn_top5": 99.0, "knn_k": 5, "knn_seconds": 0.1}

    def close(self):
        self.closed = True


def test_the_knn_watch_keeps_step0_as_the_baseline():
    warnings = []
    watch = OnlineKnnWatch(_Probe([40.0, 45.0, 30.0]), "teacher", lambda s, t: warnings.append(s))
    assert watch.measure(0)["knn_warning"] is None and watch.step0 == 40.0 and watch.text(0) == " | k-NN 40.0%"
    assert watch.measure(10)["knn_warning"] is None and watch.text(10) == " | k-NN 45.0% (step 0: 40.0%)"
    assert "below the untrained network's 40.0%" in watch.measure(20)["knn_warning"] and warnings == [20]
    assert watch.last == {"step": 20, "k": 5, "top1": 30.0, "untrained_top1": 40.0}
    resumed = OnlineKnnWatch(_Probe([35.0]), "teacher", lambda s, t: None, step0=40.0)
    assert resumed.measure(30)["knn_warning"] is not None


def test_train_runs_the_probe_it_is_handed(tmp_path):
    """The loop imports nothing from eval: a probe factory handed to train() is what measures the teacher."""
    from test_train_loop import tiny_cfg

    from dino_pipe.train.loop import train

    probes = []

    def factory(cfg, env):
        probes.append(_Probe([10.0, 20.0, 30.0]))
        return probes[-1]

    summary = train(tiny_cfg("train.epochs=2"), "synthetic:8", tmp_path / "run", gpus=0, progress=False,
                    online_knn=factory)
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "knn_top1" in r]
    assert [(r["step"], r["knn_top1"]) for r in records] == [(0, 10.0), (2, 20.0), (4, 30.0)]
    assert summary["online_knn"] == {"step": 4, "k": 5, "top1": 30.0, "untrained_top1": 10.0}
    assert probes[0].closed and all(isinstance(b, torch.nn.Module) for b in probes[0].seen)
    losses = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4] and "knn_top1" not in losses[0]


def test_train_refuses_a_configured_knn_it_cannot_measure(tmp_path, tiny_shardset):
    from test_train_loop import tiny_cfg

    from dino_pipe.train.loop import train

    cfg = tiny_cfg(f"eval.online_knn_train={tiny_shardset}", f"eval.online_knn_val={tiny_shardset}")
    with pytest.raises(UserError, match="online_knn=dino_pipe.eval.online_knn.training_probe"):
        train(cfg, "synthetic:8", tmp_path / "run", gpus=0, progress=False)
    assert not (tmp_path / "run").exists()
