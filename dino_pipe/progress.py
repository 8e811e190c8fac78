"""Rich progress bars with a rate column, shared by every long job."""

from __future__ import annotations

import sys

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


def make_progress(unit: str = "it", *extra: ProgressColumn, disable: bool | None = None) -> Progress:
    """A progress bar: description, bar, done/total, rate in ``unit``/s, elapsed, remaining.

    ``extra`` columns (e.g. ``TextColumn("{task.fields[loss]}")``) go after the rate. Off a
    terminal rich still prints the bar at a low refresh rate, so CI logs show the final rate.
    """
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
        refresh_per_second=4 if sys.stderr.isatty() else 0.5,
    )
