"""The worker processes that write shards: a bounded pool with a shared progress counter.

The pool knows nothing about shards: it runs ``work(task, report)`` (a picklable top-level
function) for each task and hands each result back in completion order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable

_counter = None


def report_to_counter(n: int) -> None:
    """Count ``n`` processed items in the pool's shared counter (no-op outside a worker)."""
    if _counter is not None:
        with _counter.get_lock():
            _counter.value += n


def _init_worker(counter) -> None:
    """Worker setup: share the progress counter, leave Ctrl-C to the parent, die with the parent."""
    global _counter
    _counter = counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def exit_when_orphaned() -> None:  # the parent was killed (kill -9): do not linger
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=exit_when_orphaned, daemon=True).start()


def _mp_context():
    """``fork`` where available: workers start in milliseconds and never re-import ``__main__``.

    All workers are forked at once, before the progress bar's thread starts (see
    :class:`WorkerPool`), and they only use PIL, hashlib and file I/O.
    """
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


class WorkerPool:
    """Worker processes; in-process when ``workers <= 1``.

    Create it *before* starting other threads: with ``fork`` every worker is started here.
    At most ``2 x workers`` tasks are in flight, so memory stays bounded.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None
        self.counter = None
        if workers > 1:
            ctx = _mp_context()
            self.counter = ctx.Value("q", 0)
            self.pool = ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(self.counter,)
            )
            self.pool.submit(os.getpid).result()  # start the workers now

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, work: Callable[..., Any], tasks: Iterable, on_record: Callable[[Any], None],
            on_progress: Callable[[int], None]) -> None:
        """Run ``work(task, report)`` for each of ``tasks``; call ``on_record`` with each result as it
        finishes and ``on_progress`` with the number of items processed so far."""
        if self.pool is None:
            done = 0

            def report(n: int) -> None:
                nonlocal done
                done += n
                on_progress(done)

            for t in tasks:
                on_record(work(t, report))
            return
        todo = iter(tasks)
        pending: set = set()

        def refill() -> None:
            while len(pending) < 2 * self.workers:
                t = next(todo, None)
                if t is None:
                    return
                pending.add(self.pool.submit(work, t))

        refill()
        while pending:
            done, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            on_progress(self.counter.value)
            for fut in done:
                pending.discard(fut)
                on_record(fut.result())
            refill()
        on_progress(self.counter.value)
