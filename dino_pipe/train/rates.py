"""A training run's throughput: images/s and the share of time spent waiting for data, per logging window
and over the whole run."""

from __future__ import annotations

import time
from typing import Any, Iterator


class RateMeter:
    """Counts steps and data waits. :meth:`window` gives the rates since the previous window (and starts a
    new one); :meth:`summary` the rates of the whole run."""

    def __init__(self, images_per_step: int):
        self.images_per_step = images_per_step
        self.window_t, self.window_wait, self.window_steps = time.perf_counter(), 0.0, 0
        self.total_wait, self.t_start = 0.0, time.perf_counter()

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

    def step(self) -> None:
        """One more step done in this window."""
        self.window_steps += 1

    def window(self) -> dict[str, float]:
        """``{"images_per_s", "data_wait_pct"}`` of the window that ends now."""
        now = time.perf_counter()
        dt = max(now - self.window_t, 1e-9)
        rates = {"images_per_s": self.window_steps * self.images_per_step / dt,
                 "data_wait_pct": 100.0 * self.window_wait / dt}
        self.window_t, self.window_wait, self.window_steps = now, 0.0, 0
        return rates

    def summary(self, steps_done: int) -> dict[str, float]:
        """The whole run's rates (``steps_done`` steps in this process's run)."""
        elapsed = time.perf_counter() - self.t_start
        return {"images_per_s": steps_done * self.images_per_step / elapsed if elapsed > 0 and steps_done else 0.0,
                "data_wait_pct": 100.0 * self.total_wait / elapsed if elapsed > 0 else 0.0}
