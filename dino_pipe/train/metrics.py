"""What a training run reports while it runs, wired from small components:

* :class:`~dino_pipe.train.rates.RateMeter` - images/s and data wait, per logging window and over the run;
* sinks (:mod:`dino_pipe.train.sinks`) - metrics.jsonl, TensorBoard and the progress line, each given the records;
* :class:`~dino_pipe.train.diagnostics.CollapseCheck` - the uniform, one-hot and partial collapse checks;
* :class:`~dino_pipe.train.knn_hook.OnlineKnnWatch` - the online k-NN, when the caller handed down a probe.

:class:`MetricsLogger` is one per rank; only rank 0 has sinks (writes files, draws the progress bar) and
prints warnings. The loop asks it which steps are logging or check steps (:meth:`MetricsLogger.due`), hands
it every batch wait (:meth:`MetricsLogger.next_batch`) and every step's result
(:meth:`MetricsLogger.after_step`), and takes the run's figures from :meth:`MetricsLogger.summary` at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

from dino_pipe.atomic import atomic_write_text, read_jsonl
from dino_pipe.config import Config
from dino_pipe.distributed import DistEnv
from dino_pipe.train.diagnostics import CollapseCheck
from dino_pipe.train.knn_hook import KnnProbeFactory, OnlineKnnWatch
from dino_pipe.train.rates import RateMeter
from dino_pipe.train.sinks import JsonlSink, ProgressLine, Sink, TensorBoardSink

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


def print_warning(step: int, text: str) -> None:
    """A warning line on stderr, naming the step."""
    from dino_pipe.progress import console

    console.print(f"[yellow]warning[/] step {step}: {text}", highlight=False)


def step_values(res) -> dict[str, float]:
    """A step result's figures for its record: the total ``loss``, every named term (``loss_*``: in
    ``res.terms`` or ``res.values`` or as an attribute), the schedule values and ``grad_norm``."""
    named = {k: v for k, v in vars(res).items() if k.startswith("loss_")}
    named.update({k: v for k, v in (getattr(res, "terms", None) or {}).items() if k.startswith("loss_")})
    values = {k: v for k, v in res.values.items() if not k.startswith("loss_")}
    named.update({k: v for k, v in res.values.items() if k.startswith("loss_")})
    return {"loss": float(res.loss), **{k: float(v) for k, v in named.items()}, **values,
            "grad_norm": float(res.grad_norm)}


class MetricsLogger:
    """Wires the rate meter, the sinks, the collapse checks and the online k-NN of ``teacher`` (a backbone;
    measured when ``online_knn`` (see :mod:`dino_pipe.train.knn_hook`) gives this rank a probe)."""

    def __init__(self, run_dir: Path, cfg: Config, env: DistEnv, steps_per_epoch: int, stop_at: int,
                 start_step: int, show_progress: bool, teacher: Any = None,
                 online_knn: KnnProbeFactory | None = None):
        self.run_dir, self.cfg, self.env = run_dir, cfg, env
        self.steps_per_epoch, self.stop_at, self.start_step = steps_per_epoch, stop_at, start_step
        warn = print_warning if env.is_main else (lambda step, text: None)
        self.rates = RateMeter(cfg.data.batch_size * env.world_size)
        self.collapse = CollapseCheck(cfg.model.out_dim, warn)
        self.collapse_stats: dict = {}
        self.jsonl = JsonlSink(run_dir / METRICS_NAME) if env.is_main else None
        self.sinks: list[Sink] = [s for s in (self.jsonl, self._tensorboard()) if s is not None]
        self.line = ProgressLine(stop_at, start_step, steps_per_epoch, show_progress)
        self.last_loss = float("nan")
        self.teacher, self.online_knn, self.warn = teacher, online_knn, warn
        self.knn: OnlineKnnWatch | None = None
        self.fetch_stats: Any = None  # streaming: a callable -> {bytes, gets, mb_per_s, depth} of this rank's fetches

    def __enter__(self) -> "MetricsLogger":
        self.line.__enter__()
        self._start_online_knn()
        return self

    def __exit__(self, *exc) -> None:
        self.line.__exit__(*exc)
        if self.knn is not None:
            self.knn.close()
        for sink in self.sinks:
            sink.close()

    def due(self, n: int) -> tuple[bool, bool]:
        """(log, collapse check) for the 1-based step ``n`` about to run."""
        t = self.cfg.train
        return (n % t.log_every_steps == 0 or n == self.stop_at,
                n % t.collapse_check_every_steps == 0 or n == self.stop_at)

    def next_batch(self, it: Iterator) -> Any:
        """The next batch of the epoch's iterator ``it`` (None at its end); the wait counts as data wait."""
        return self.rates.next_batch(it)

    def after_step(self, step: int, res, log_now: bool, check_now: bool) -> None:
        """Account for the step that just ran (``step`` steps done): collapse check, record, progress line."""
        self.rates.step()
        self.collapse.observe(res.teacher_probs)
        if check_now:
            self.collapse_stats = self.collapse.check(step)
        if log_now:
            values = step_values(res)
            self.last_loss = values["loss"]
            record = {"step": step, "epoch": step / self.steps_per_epoch, **values, **self.rates.window(),
                      **self.collapse_stats, **self._fetch_record(), "time": time.time()}
            self.collapse_stats = {}
            for sink in self.sinks:
                sink.write(record)
            self.line.write(record)
        if self.knn is not None and self.knn.due(step, self.steps_per_epoch, self.stop_at):
            self._measure_knn(step)
        self.line.advance(step)

    def summary(self, step: int) -> dict:
        """The run's loss and rates for summary.json (``step`` steps done in all)."""
        out = {"final_loss": self.last_loss, **self.rates.summary(step - self.start_step)}
        if self.knn is not None and self.knn.last is not None:  # the last measured and step 0's (untrained)
            out["online_knn"] = dict(self.knn.last)
        return out

    # -- pieces ---------------------------------------------------------------------------------

    def _start_online_knn(self) -> None:
        """Online k-NN when handed down and configured: measure the untrained teacher on a fresh run, else
        read step 0's value back."""
        probe = self.online_knn(self.cfg, self.env) if self.online_knn and self.teacher is not None else None
        if probe is None:
            return
        step0 = None
        if self.start_step > 0:
            first = [r for r in read_jsonl(self.run_dir / METRICS_NAME) if r.get("step") == 0 and "knn_top1" in r]
            step0 = first[0]["knn_top1"] if first else None
        self.knn = OnlineKnnWatch(probe, self.teacher, self.warn, step0)
        if self.start_step == 0:
            self._measure_knn(0)

    def _measure_knn(self, step: int) -> None:
        """Measure the teacher's k-NN; the record goes to metrics.jsonl (not TensorBoard), the value to the line."""
        m = self.knn.measure(step)
        if self.jsonl is not None:
            self.jsonl.write({"step": step, "epoch": step / self.steps_per_epoch, **m, "time": time.time()})
        self.line.show_knn(self.knn.text(step))

    def _fetch_record(self) -> dict:
        """Streaming: this rank's fetch figures as ``fetch_*`` record fields (bytes, GETs, MB/s, prefetch depth)."""
        return {f"fetch_{k}": v for k, v in self.fetch_stats().items()} if self.fetch_stats else {}

    def _tensorboard(self) -> TensorBoardSink | None:
        return TensorBoardSink.open(self.run_dir / "tensorboard") if self.env.is_main else None
