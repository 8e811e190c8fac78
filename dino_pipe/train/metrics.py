"""What a training run reports while it runs: rate windows, metrics.jsonl, TensorBoard, the progress
line and the collapse checks.

:class:`MetricsLogger` is one per rank; only rank 0 writes files, prints and draws the progress bar.
The loop asks it which steps are logging or check steps (:meth:`MetricsLogger.due`), hands it every
batch wait (:meth:`MetricsLogger.next_batch`) and every step's result (:meth:`MetricsLogger.after_step`),
and takes the run's figures from :meth:`MetricsLogger.summary` at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

from dino_pipe.atomic import append_jsonl, atomic_write_text, read_jsonl
from dino_pipe.config import Config
from dino_pipe.train.diagnostics import CollapseMonitor
from dino_pipe.train.distributed import DistEnv

METRICS_NAME = "metrics.jsonl"


def trim_metrics(run_dir: Path, resumed_step: int | None) -> None:
    """A fresh run starts a new metrics.jsonl; a resumed one drops the records of steps after its
    checkpoint (they will be logged again)."""
    metrics = run_dir / METRICS_NAME
    if resumed_step is None:
        if metrics.exists():
            metrics.unlink()
    else:
        kept = [r for r in read_jsonl(metrics) if r.get("step", 0) <= resumed_step]
        atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsLogger:
    """Rate windows, metrics.jsonl + TensorBoard records, the progress line and the collapse checks."""

    def __init__(self, run_dir: Path, cfg: Config, env: DistEnv, steps_per_epoch: int, stop_at: int,
                 start_step: int, show_progress: bool):
        self.run_dir, self.cfg, self.env = run_dir, cfg, env
        self.steps_per_epoch, self.stop_at, self.start_step = steps_per_epoch, stop_at, start_step
        self.images_per_step = cfg.data.batch_size * env.world_size
        self.monitor = CollapseMonitor(cfg.model.out_dim)
        self.tb = self._tensorboard()
        self.last_loss = float("nan")
        self.window_t, self.window_wait, self.window_steps = time.perf_counter(), 0.0, 0
        self.total_wait, self.t_loop = 0.0, time.perf_counter()
        self.rates: dict[str, float] = {"images_per_s": 0.0, "data_wait_pct": 0.0}
        self.collapse_stats: dict = {}
        self.last_warning: str | None = None
        self.progress = self._progress(stop_at, start_step, show_progress)
        self.task = None

    def __enter__(self) -> "MetricsLogger":
        self.progress.__enter__()
        self.task = self.progress.tasks[0].id if self.progress.tasks else None
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)
        if self.tb is not None:
            self.tb.close()

    def due(self, n: int) -> tuple[bool, bool]:
        """(log, collapse check) for the 1-based step ``n`` about to run."""
        t = self.cfg.train
        return (n % t.log_every_steps == 0 or n == self.stop_at,
                n % t.collapse_check_every_steps == 0 or n == self.stop_at)

    def next_batch(self, it: Iterator) -> Any:
        """The next batch of the epoch's iterator ``it`` (None at its end); the wait counts as data wait."""
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return None
        wait = time.perf_counter() - t0
        self.window_wait += wait
        self.total_wait += wait
        return batch

    def after_step(self, step: int, res, log_now: bool, check_now: bool) -> None:
        """Account for the step that just ran (``step`` steps done): collapse check, record, progress line."""
        self.window_steps += 1
        self.monitor.observe(res.teacher_probs)
        if check_now:
            self._collapse_check(step)
        if log_now:
            self._log(step, res)
        if self.task is not None and log_now:
            v, r = res.values, self.rates
            self.progress.update(
                self.task,
                completed=step,
                info=(
                    f"ep {step / self.steps_per_epoch:.2f}/{self.stop_at / self.steps_per_epoch:g} "
                    f"loss {self.last_loss:.4f} "
                    f"lr {v['lr']:.2e} wd {v['wd']:.3f} m {v['momentum']:.4f} τt {v['teacher_temp']:.3f} "
                    f"{r['images_per_s']:.0f} img/s wait {r['data_wait_pct']:.0f}%"
                ),
            )
        elif self.task is not None:
            self.progress.update(self.task, completed=step)

    def summary(self, step: int) -> dict:
        """The run's loss and rates for summary.json (``step`` steps done in all)."""
        elapsed = time.perf_counter() - self.t_loop
        done = step - self.start_step
        return {"final_loss": self.last_loss,
                "images_per_s": done * self.images_per_step / elapsed if elapsed > 0 and done else 0.0,
                "data_wait_pct": 100.0 * self.total_wait / elapsed if elapsed > 0 else 0.0}

    # -- pieces ---------------------------------------------------------------------------------

    def _collapse_check(self, step: int) -> None:
        self.collapse_stats = self.monitor.summary()
        warning = self.monitor.warning(self.collapse_stats) if self.env.is_main else None
        kind = warning.split(" (")[0] if warning else None
        if warning and kind != self.last_warning:  # once per episode, not every check
            from dino_pipe.progress import console

            console.print(f"[yellow]warning[/] step {step}: {warning}", highlight=False)
        self.last_warning = kind
        if self.collapse_stats:
            self.collapse_stats["collapse_warning"] = warning

    def _log(self, step: int, res) -> None:
        self.last_loss = float(res.loss)
        now = time.perf_counter()
        dt = max(now - self.window_t, 1e-9)
        self.rates = {"images_per_s": self.window_steps * self.images_per_step / dt,
                      "data_wait_pct": 100.0 * self.window_wait / dt}
        self.window_t, self.window_wait, self.window_steps = now, 0.0, 0
        record = {"step": step, "epoch": step / self.steps_per_epoch, "loss": self.last_loss,
                  **res.values, "grad_norm": float(res.grad_norm), **self.rates, **self.collapse_stats,
                  "time": time.time()}
        if self.env.is_main:
            append_jsonl(self.run_dir / METRICS_NAME, record)
            if self.tb is not None:
                for k, v in record.items():
                    if k not in ("step", "time") and isinstance(v, (int, float)):
                        self.tb.add_scalar(f"train/{k}", v, step)
        self.collapse_stats = {}

    @staticmethod
    def _progress(total: int, completed: int, show: bool):
        from rich.progress import TextColumn

        from dino_pipe.progress import make_progress

        p = make_progress("step", TextColumn("{task.fields[info]}"), disable=not show)
        p.add_task("train", total=total, completed=completed, info="")
        return p

    def _tensorboard(self):
        if not self.env.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed: metrics.jsonl only
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
