"""Progress off a terminal: plain lines at a steady interval, for every long command."""

from __future__ import annotations

import io
import re

from typer.testing import CliRunner

from dino_pipe.progress import PlainProgress, make_progress


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_at_the_interval_with_rate_and_eta():
    clock, out = FakeClock(), io.StringIO()
    with PlainProgress("img", every=10, stream=out, clock=clock) as bar:
        task = bar.add_task("shard train", total=100)
        assert len(out.getvalue().splitlines()) == 1  # a line as soon as the job starts
        for _ in range(9):  # 9 s, 18 images: no line yet
            clock.t += 1
            bar.advance(task, 2)
        assert len(out.getvalue().splitlines()) == 1
        clock.t += 1
        bar.advance(task, 2)  # 10 s: 20 images at 2 img/s -> 80 left = 40 s
        lines = out.getvalue().splitlines()
        assert len(lines) == 2
        assert re.search(r"\] shard train 20/100 20% 2\.0 img/s elapsed 0:10 ETA 0:40$", lines[1]), lines[1]
        clock.t += 5
        bar.update(task, completed=30, info="loss 1.2345")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[2].endswith("30/100 30% 2.0 img/s elapsed 0:15 ETA 0:35 | loss 1.2345")


def test_a_task_that_completes_says_so_at_once():
    clock, out = FakeClock(), io.StringIO()
    with PlainProgress("img", every=60, stream=out, clock=clock) as bar:
        a = bar.add_task("verify train", total=10)
        b = bar.add_task("verify val", total=5)
        clock.t += 2
        bar.advance(a, 10)  # complete: printed now, not when the display closes
        assert out.getvalue().splitlines()[-1].endswith("verify train 10/10 100% 5.0 img/s elapsed 0:02 ETA 0:00")
        clock.t += 3
        bar.advance(b, 1)
        assert len(out.getvalue().splitlines()) == 3
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "verify val 1/5" in lines[-1]


def test_no_repeated_last_line_and_reset_restarts_the_rate():
    clock, out = FakeClock(), io.StringIO()
    with PlainProgress("step", every=0, stream=out, clock=clock) as bar:
        task = bar.add_task("train", total=10, completed=4)  # resumed at step 4: the rate counts this run only
        clock.t += 2
        bar.update(task, completed=5)
        assert "5/10 50% 0.5 step/s elapsed 0:02 ETA 0:10" in out.getvalue().splitlines()[-1]
        bar.reset(task, total=20)
        clock.t += 1
        bar.advance(task, 4)
    lines = out.getvalue().splitlines()
    assert lines[-1].split("] ", 1)[1] == "train 4/20 20% 4.0 step/s elapsed 0:01 ETA 0:04"
    assert len(lines) == 3  # start, 5/10, 4/20: the exit adds nothing already printed


def test_off_a_terminal_make_progress_is_plain(monkeypatch):
    monkeypatch.setenv("DINO_PIPE_PROGRESS_EVERY", "3")
    bar = make_progress("img")  # pytest captures stderr: not a terminal
    assert isinstance(bar, PlainProgress) and bar.every == 3
    monkeypatch.setenv("DINO_PIPE_PROGRESS_EVERY", "nonsense")
    assert make_progress("img").every == 15
    assert not isinstance(make_progress("img", disable=True), PlainProgress)  # --quiet / other ranks: nothing


def _progress_lines(output: str, name: str) -> list[str]:
    return [ln for ln in output.splitlines() if re.match(rf"\[\d\d:\d\d:\d\d\] {name}", ln)]


def test_train_shard_verify_print_lines_without_a_terminal(tmp_path, monkeypatch, image_tree):
    from dino_pipe.cli import app

    monkeypatch.setenv("DINO_PIPE_PROGRESS_EVERY", "0")
    runner = CliRunner()
    res = runner.invoke(app, ["shard", str(image_tree), "--out", str(tmp_path / "s"), "--workers", "1",
                              "--shard-samples", "10"])
    assert res.exit_code == 0, res.output
    lines = _progress_lines(res.output, "shard")
    assert lines and "40/40 100%" in lines[-1] and "img/s" in lines[-1]
    res = runner.invoke(app, ["verify", str(tmp_path / "s"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    lines = _progress_lines(res.output, "verify")
    assert lines and "40/40 100%" in lines[-1]
    res = runner.invoke(app, ["train", "--data", "synthetic:16", "--out", str(tmp_path / "run"), "--gpus", "0",
                              "--epochs", "1", "--batch-size", "4", "model.arch=vit_tiny_patch16_224",
                              "model.arch_kwargs={img_size: 32, patch_size: 8, depth: 1}", "model.out_dim=64",
                              "model.hidden_dim=32", "model.bottleneck_dim=16", "data.global_size=32",
                              "data.local_size=16", "data.n_local=2", "train.log_every_steps=1", "train.cpu_threads=1"])
    assert res.exit_code == 0, res.output
    lines = _progress_lines(res.output, "train")
    assert len(lines) >= 4 and "4/4 100%" in lines[-1]
    for word in ("step/s", "ETA", "ep 0.75/1 ", "loss", "img/s", "wait"):
        assert word in lines[-2], (word, lines[-2])


def test_eval_knn_prints_lines_without_a_terminal(tmp_path, monkeypatch, tiny_shardset):
    from eval_helpers import write_tiny_checkpoint

    from dino_pipe.cli import app

    monkeypatch.setenv("DINO_PIPE_PROGRESS_EVERY", "0")
    ckpt = write_tiny_checkpoint(tmp_path / "run")
    res = CliRunner().invoke(app, ["eval", "knn", "--checkpoint", str(ckpt), "--train", str(tiny_shardset),
                                   "--val", str(tiny_shardset), "--gpus", "0", "--k", "5"])
    assert res.exit_code == 0, res.output
    for name in ("train features", "val features", "k-NN"):
        lines = _progress_lines(res.output, name)
        assert lines and "100%" in lines[-1] and "/s" in lines[-1], (name, res.output)


def test_train_lines_between_log_steps_show_the_epoch_now_and_name_the_logged_step(tmp_path, monkeypatch):
    """Between log steps the line's epoch moves on with the step; the loss and rates are those of the last
    logged step, which the line names (not repeated as if they were current)."""
    from dino_pipe.cli import app

    monkeypatch.setenv("DINO_PIPE_PROGRESS_EVERY", "0")
    res = CliRunner().invoke(app, ["train", "--data", "synthetic:32", "--out", str(tmp_path / "run"), "--gpus", "0",
                                   "--epochs", "1", "--batch-size", "4", "model.arch=vit_tiny_patch16_224",
                                   "model.arch_kwargs={img_size: 32, patch_size: 8, depth: 1}", "model.out_dim=64",
                                   "model.hidden_dim=32", "model.bottleneck_dim=16", "data.global_size=32",
                                   "data.local_size=16", "data.n_local=2", "train.log_every_steps=4",
                                   "train.cpu_threads=1"])
    assert res.exit_code == 0, res.output
    lines = {int(re.search(r"train (\d+)/8", ln).group(1)): ln for ln in _progress_lines(res.output, "train")}
    assert "ep 0.62/1 | step 4: loss" in lines[5] and "ep 0.75/1 | step 4: loss" in lines[6], lines
    assert "ep 1.00/1 | step 8: loss" in lines[8], lines
    assert "| step" not in lines.get(1, "| ")  # nothing logged yet: no figures at all
