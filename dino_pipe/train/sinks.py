"""Where a training run's records go: metrics.jsonl, TensorBoard and the progress line.

Each sink receives a record dict (``{"step": …, "epoch": …, "loss": …, "lr": …, …, "time": …}``) through
``write(record)`` and owns its file or display; :class:`~dino_pipe.train.metrics.MetricsLogger` builds the
records and hands them on. Sinks exist on rank 0 only (the progress line is drawn there alone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from dino_pipe.atomic import append_jsonl


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """One JSON line per record appended to ``path`` (``RUN_DIR/metrics.jsonl``)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record)

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Every numeric value of a record (but ``step`` and ``time``) as the scalar ``train/<key>`` at its step."""

    def __init__(self, writer):
        self.writer = writer

    @classmethod
    def open(cls, log_dir: Path) -> "TensorBoardSink | None":
        """A sink writing event files under ``log_dir``; None when tensorboard is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed: metrics.jsonl only
            return None
        return cls(SummaryWriter(log_dir=str(log_dir)))

    def write(self, record: dict[str, Any]) -> None:
        for k, v in record.items():
            if k not in ("step", "time") and isinstance(v, (int, float)):
                self.writer.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        self.writer.close()


def loss_terms_text(record: dict[str, Any]) -> str:
    """The named loss terms of a record (``loss_dino``, ``loss_koleo``, …) as `` (dino 5.1234 koleo 0.0123)``;
    empty when the record has none."""
    terms = [f"{k[len('loss_'):]} {v:.4f}" for k, v in record.items()
             if k.startswith("loss_") and isinstance(v, (int, float))]
    return f" ({' '.join(terms)})" if terms else ""


class ProgressLine:
    """The progress bar of the steps and its text: the epoch now, the figures of the last logged record
    (measured only every train.log_every_steps, so named as the step they belong to) and the online
    k-NN's latest value."""

    def __init__(self, total: int, completed: int, steps_per_epoch: int, show: bool):
        from rich.progress import TextColumn

        from dino_pipe.progress import make_progress

        self.steps_per_epoch, self.total = steps_per_epoch, total
        self.bar = make_progress("step", TextColumn("{task.fields[info]}"), disable=not show)
        self.bar.add_task("train", total=total, completed=completed, info="")
        self.task = None
        self.logged, self.knn = "", ""

    def __enter__(self) -> "ProgressLine":
        self.bar.__enter__()
        self.task = self.bar.tasks[0].id if self.bar.tasks else None
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def write(self, record: dict[str, Any]) -> None:
        """Take a logged step's record as the figures shown until the next one."""
        r = record
        self.logged = (f"step {r['step']}: loss {r['loss']:.4f}{loss_terms_text(r)} lr {r['lr']:.2e} wd {r['wd']:.3f} "
                       f"m {r['momentum']:.4f} τt {r['teacher_temp']:.3f} "
                       f"{r['images_per_s']:.0f} img/s wait {r['data_wait_pct']:.0f}%{fetch_text(r)}")

    def show_knn(self, text: str) -> None:
        """The online k-NN's part of the line (`` | k-NN 41.2% (step 0: 12.0%)``)."""
        self.knn = text

    def text(self, step: int) -> str:
        epochs = f"ep {step / self.steps_per_epoch:.2f}/{self.total / self.steps_per_epoch:g}"
        logged = f" | {self.logged}" if self.logged else ""
        return f"{epochs}{logged}{self.knn}"

    def advance(self, step: int) -> None:
        """``step`` steps done."""
        if self.task is not None:
            self.bar.update(self.task, completed=step, info=self.text(step))


def fetch_text(record: dict[str, Any]) -> str:
    """Streaming: `` | fetched 812 MB at 95.3 MB/s, 3 shards ahead`` from a record's ``fetch_*`` fields; else empty."""
    if "fetch_bytes" not in record:
        return ""
    return (f" | fetched {record['fetch_bytes'] / 1e6:.0f} MB at {record['fetch_mb_per_s']:.1f} MB/s, "
            f"{record['fetch_depth']} shards ahead")
