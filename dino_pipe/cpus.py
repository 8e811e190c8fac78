"""How many CPU cores this process may use (its affinity mask, e.g. a SLURM or container cpuset), and how
many torch threads a CPU training process gets by default.

Why not all cores for torch: the DALI loader runs its own threads beside the model, and torch's OpenMP
threads wait for each other at the end of every parallel operator. With more threads than free cores
(the loader's thread, or any other program on the machine) one of them is always descheduled and the
others wait for it: on a 2-core machine with other work running, 2 torch threads + 1 DALI thread
trained 4.9-5.6x slower than 1 torch thread (medians; ``tools/bench_threads.py``,
``benchmarks/threads-cpu_small.json``).
So the automatic count leaves the loader its threads: cores per process minus the loader's threads.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores in this process's affinity mask; ``os.cpu_count()`` where the platform has no such mask."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def training_threads(cpu_threads: int, loader_threads: int, procs: int = 1) -> int:
    """torch intra-op threads for each of ``procs`` CPU training processes on this machine.

    ``cpu_threads`` > 0 is taken as given (``train.cpu_threads``). 0 = automatic: this process's share
    of the cores (:func:`available_cores` / ``procs``) minus the loader's threads (``data.threads``), at
    least 1. When the loader's count is automatic too (``data.threads`` 0: the loader may use the whole
    share), torch gets half the share: the loader's threads sleep while its queue is full.
    """
    if cpu_threads > 0:
        return cpu_threads
    share = max(1, available_cores() // max(1, procs))
    if loader_threads <= 0:
        return max(1, share // 2)
    return max(1, share - loader_threads)
