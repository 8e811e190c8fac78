"""How many CPU cores this process may use (its affinity mask, e.g. a SLURM or container cpuset)."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores in this process's affinity mask; ``os.cpu_count()`` where the platform has no such mask."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1
