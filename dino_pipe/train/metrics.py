"""What a training run reports while it runs: rate windows, metrics.jsonl, TensorBoard, the progress
line, the collapse checks (uniform, one-hot and partial collapse) and the optional online k-NN.

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
from dino_pipe.train.diagnostics import CollapseMonitor, PartialCollapseWatch
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
    """Rate windows, metrics.jsonl + TensorBoard records, the progress line, the collapse checks and the
    online k-NN of ``teacher`` (a backbone; only used when ``eval.online_knn_train/val`` are set)."""

    def __init__(self, run_dir: Path, cfg: Config, env: DistEnv, steps_per_epoch: int, stop_at: int,
                 start_step: int, show_progress: bool, teacher: Any = None):
        self.run_dir, self.cfg, self.env = run_dir, cfg, env
        self.steps_per_epoch, self.stop_at, self.start_step = steps_per_epoch, stop_at, start_step
        self.images_per_step = cfg.data.batch_size * env.world_size
        self.monitor = CollapseMonitor(cfg.model.out_dim)
        self.partial = PartialCollapseWatch(cfg.model.out_dim)
        self.last_check_step = start_step
        self.tb = self._tensorboard()
        self.last_loss = float("nan")
        self.window_t, self.window_wait, self.window_steps = time.perf_counter(), 0.0, 0
        self.total_wait, self.t_loop = 0.0, time.perf_counter()
        self.rates: dict[str, float] = {"images_per_s": 0.0, "data_wait_pct": 0.0}
        self.collapse_stats: dict = {}
        self.last_warning: str | None = None
        self.progress = self._progress(stop_at, start_step, show_progress)
        self.task = None
        self.teacher, self.online, self.knn0, self.knn_info = teacher, None, None, ""
        self.knn_last: dict | None = None
        self.logged_info = ""
        self.fetch_stats: Any = None  # streaming: a callable -> {bytes, gets, mb_per_s, depth} of this rank's fetches

    def __enter__(self) -> "MetricsLogger":
        self.progress.__enter__()
        self.task = self.progress.tasks[0].id if self.progress.tasks else None
        self._start_online_knn()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)
        if self.online is not None:
            self.online.close()
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
        if log_now:
            v, r = res.values, self.rates
            self.logged_info = (f"step {step}: loss {self.last_loss:.4f} lr {v['lr']:.2e} wd {v['wd']:.3f} "
                                f"m {v['momentum']:.4f} τt {v['teacher_temp']:.3f} "
                                f"{r['images_per_s']:.0f} img/s wait {r['data_wait_pct']:.0f}%{self._fetch_info()}")
        if self.online is not None and self.online.due(step, self.steps_per_epoch, self.stop_at):
            self.knn_info = self._measure_knn(step)
        if self.task is not None:
            self.progress.update(self.task, completed=step, info=self._progress_info(step))

    def _progress_info(self, step: int) -> str:
        """The progress line's text: the epoch of ``step`` now, and the figures of the last logged step named
        as such (they are measured only every train.log_every_steps)."""
        epochs = f"ep {step / self.steps_per_epoch:.2f}/{self.stop_at / self.steps_per_epoch:g}"
        logged = f" | {self.logged_info}" if self.logged_info else ""
        return f"{epochs}{logged}{self.knn_info}"

    def _fetch_record(self) -> dict:
        """Streaming: this rank's fetch figures as ``fetch_*`` record fields (bytes, GETs, MB/s, prefetch depth)."""
        return {f"fetch_{k}": v for k, v in self.fetch_stats().items()} if self.fetch_stats else {}

    def _fetch_info(self) -> str:
        f = self._fetch_record()
        return (f" | fetched {f['fetch_bytes'] / 1e6:.0f} MB at {f['fetch_mb_per_s']:.1f} MB/s, "
                f"{f['fetch_depth']} shards ahead") if f else ""

    def summary(self, step: int) -> dict:
        """The run's loss and rates for summary.json (``step`` steps done in all)."""
        elapsed = time.perf_counter() - self.t_loop
        done = step - self.start_step
        out = {"final_loss": self.last_loss,
               "images_per_s": done * self.images_per_step / elapsed if elapsed > 0 and done else 0.0,
               "data_wait_pct": 100.0 * self.total_wait / elapsed if elapsed > 0 else 0.0}
        if self.knn_last is not None:  # the run's own k-NN: the last measured and step 0's (the untrained network)
            out["online_knn"] = dict(self.knn_last)
        return out

    # -- pieces ---------------------------------------------------------------------------------

    def _collapse_check(self, step: int) -> None:
        window_images = 2 * self.cfg.data.batch_size * (step - self.last_check_step)  # this rank's teacher outputs
        self.last_check_step = step
        self.collapse_stats = self.monitor.summary()
        warning = self.monitor.warning(self.collapse_stats) if self.env.is_main else None
        kind = warning.split(" (")[0] if warning else None
        if warning and kind != self.last_warning:  # once per episode, not every check
            from dino_pipe.progress import console

            console.print(f"[yellow]warning[/] step {step}: {warning}", highlight=False)
        self.last_warning = kind
        if self.collapse_stats:
            self.collapse_stats["collapse_warning"] = warning
            partial_warning = self.partial.update(self.collapse_stats, step, window_images)
            if partial_warning and self.env.is_main:
                from dino_pipe.progress import console

                console.print(f"[yellow]warning[/] step {step}: {partial_warning}", highlight=False)
            self.collapse_stats["partial_collapse_warning"] = partial_warning

    def _start_online_knn(self) -> None:
        """Online k-NN when configured: measure the untrained teacher on a fresh run, else read step 0's value."""
        from dino_pipe.eval import online_knn

        if self.teacher is None or not online_knn.enabled(self.cfg):
            return
        from dino_pipe.eval.workers import WorkerContext

        self.online = online_knn.OnlineKnn(self.cfg, WorkerContext.from_env(self.env))
        if self.start_step == 0:
            self.knn_info = self._measure_knn(0)
        else:
            first = [r for r in read_jsonl(self.run_dir / METRICS_NAME) if r.get("step") == 0 and "knn_top1" in r]
            self.knn0 = first[0]["knn_top1"] if first else None

    def _measure_knn(self, step: int) -> str:
        """Measure the teacher's k-NN, append it to metrics.jsonl, warn when below step 0; the progress text."""
        m = self.online.measure(self.teacher)
        if step == 0:
            self.knn0 = m["knn_top1"]
        warning = None
        if self.knn0 is not None and step > 0 and m["knn_top1"] < self.knn0:
            warning = (f"online k-NN top-1 {m['knn_top1']:.1f}% (k={m['knn_k']}) is below the untrained network's "
                       f"{self.knn0:.1f}% at step 0: training is making the features worse (see the collapse numbers "
                       "in metrics.jsonl; a softer teacher, more teacher momentum or a lower lr may help)")
        if self.env.is_main:
            record = {"step": step, "epoch": step / self.steps_per_epoch, **m, "knn_warning": warning,
                      "time": time.time()}
            append_jsonl(self.run_dir / METRICS_NAME, record)
            if warning:
                from dino_pipe.progress import console

                console.print(f"[yellow]warning[/] step {step}: {warning}", highlight=False)
        self.knn_last = {"step": step, "k": m["knn_k"], "top1": m["knn_top1"], "untrained_top1": self.knn0}
        base = f" (step 0: {self.knn0:.1f}%)" if self.knn0 is not None and step > 0 else ""
        return f" | k-NN {m['knn_top1']:.1f}%{base}"

    def _log(self, step: int, res) -> None:
        self.last_loss = float(res.loss)
        now = time.perf_counter()
        dt = max(now - self.window_t, 1e-9)
        self.rates = {"images_per_s": self.window_steps * self.images_per_step / dt,
                      "data_wait_pct": 100.0 * self.window_wait / dt}
        self.window_t, self.window_wait, self.window_steps = now, 0.0, 0
        record = {"step": step, "epoch": step / self.steps_per_epoch, "loss": self.last_loss,
                  **res.values, "grad_norm": float(res.grad_norm), **self.rates, **self.collapse_stats,
                  **self._fetch_record(), "time": time.time()}
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
