"""Progress of every long job: a rich bar on a terminal, plain timed lines anywhere else.

:func:`make_progress` is the one entry point (shard, verify, train, bench, eval features, k-NN,
linear probe). On a terminal it is a rich :class:`~rich.progress.Progress` bar with a rate column.
When stderr is not a terminal (a log file, a pipe, CI, a SLURM job) a bar cannot redraw, so
:class:`PlainProgress` prints one line when a task starts, then at most one line every
``DINO_PIPE_PROGRESS_EVERY`` seconds (default 15) while it advances, and a last line when it is
complete (or when the display closes)::

    [12:03:41] train 120/625 19% 1.9 step/s elapsed 1:03 ETA 4:26 | ep 0 loss 5.8123 ... 61 img/s wait 1%

Both offer the same small API: ``with make_progress(...) as bar: task = bar.add_task(...);
bar.update(task, completed=.../advance=..., **fields); bar.advance(task, n); bar.reset(task, total=...)``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)

EVERY_ENV = "DINO_PIPE_PROGRESS_EVERY"
DEFAULT_EVERY_S = 15.0


class RateColumn(ProgressColumn):
    """Items per second over the task's lifetime, e.g. ``1,234 img/s``."""

    def __init__(self, unit: str = "it"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            elapsed = task.elapsed or 0
            speed = task.completed / elapsed if elapsed > 0 else None
        if speed is None:
            return Text(f"-- {self.unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.1f} {self.unit}/s", style="progress.data.speed")


def progress_every() -> float:
    """Seconds between plain progress lines: ``$DINO_PIPE_PROGRESS_EVERY`` (default 15)."""
    raw = os.environ.get(EVERY_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_EVERY_S
    except ValueError:
        value = DEFAULT_EVERY_S
    return max(value, 0.0)


def _clock_text(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class _PlainTask:
    id: int
    description: str
    total: float | None
    completed: float
    started: float
    start_completed: float
    fields: dict[str, Any] = field(default_factory=dict)
    last_line: float = float("-inf")
    printed_at: float | None = None  # ``completed`` when the last line was printed


class PlainProgress:
    """The rich ``Progress`` calls dino-pipe uses, printed as plain lines at a steady interval.

    Lines are printed from the calls themselves (no thread, so forking workers stays safe): a job
    that advances reports at least every ``every`` seconds after its first advance past the interval.
    ``clock`` and ``stream`` are injectable for tests.
    """

    def __init__(self, unit: str = "it", *, every: float | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.unit = unit
        self.every = progress_every() if every is None else every
        self._stream = stream
        self.clock = clock
        self.tasks: list[_PlainTask] = []

    # -- the rich Progress API ------------------------------------------------------------------

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        for task in self.tasks:
            if task.printed_at != task.completed:
                self._line(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        now = self.clock()
        task = _PlainTask(len(self.tasks), description, total, completed, now, completed, dict(fields))
        self.tasks.append(task)
        self._line(task)
        return task.id

    def update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, description: str | None = None, **fields: Any) -> None:
        task = self.tasks[task_id]
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description
        task.fields.update(fields)
        finished = bool(task.total) and task.completed >= task.total and task.printed_at != task.completed
        if finished or self.clock() - task.last_line >= self.every:
            self._line(task)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def reset(self, task_id: int, *, total: float | None = None, completed: float = 0, **fields: Any) -> None:
        task = self.tasks[task_id]
        task.completed = task.start_completed = completed
        task.started = self.clock()
        if total is not None:
            task.total = total
        task.fields.update(fields)

    # -- lines ----------------------------------------------------------------------------------

    def format(self, task: _PlainTask) -> str:
        now = self.clock()
        elapsed = max(now - task.started, 0.0)
        done = task.completed - task.start_completed
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        parts = [time.strftime("[%H:%M:%S]"), task.description]
        if task.total:
            parts.append(f"{task.completed:,.0f}/{task.total:,.0f} {100.0 * task.completed / task.total:.0f}%")
        else:
            parts.append(f"{task.completed:,.0f}")
        parts.append(f"{rate:,.1f} {self.unit}/s" if rate else f"-- {self.unit}/s")
        parts.append(f"elapsed {_clock_text(elapsed)}")
        if task.total and rate:
            parts.append(f"ETA {_clock_text(max(task.total - task.completed, 0) / rate)}")
        info = task.fields.get("info")
        line = " ".join(parts)
        return f"{line} | {info}" if info else line

    def _line(self, task: _PlainTask) -> None:
        stream = self._stream if self._stream is not None else console.file
        stream.write(self.format(task) + "\n")
        stream.flush()
        task.last_line = self.clock()
        task.printed_at = task.completed


def make_progress(unit: str = "it", *extra: ProgressColumn, disable: bool | None = None) -> Progress | PlainProgress:
    """A progress display: description, bar, done/total, rate in ``unit``/s, elapsed, remaining.

    ``extra`` columns (e.g. ``TextColumn("{task.fields[info]}")``) go after the rate; off a
    terminal their text comes from the task's ``info`` field, after a ``|``. ``disable`` shows
    nothing. Off a terminal (stderr redirected): :class:`PlainProgress` lines.
    """
    if not disable and not console.is_terminal:
        return PlainProgress(unit)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=bool(disable),
        transient=False,
    )


def say_once(text: str) -> None:
    """One line on stderr, once per job (rank 0, or the launcher of a local run), not once per rank."""
    from dino_pipe.distributed import is_main_process

    if is_main_process():
        console.print(text, highlight=False, soft_wrap=True)
