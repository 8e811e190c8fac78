"""Run an evaluation on N local processes: one per GPU (NCCL) or N CPU processes (gloo).

:func:`run_workers` calls ``fn(ctx, *args)`` in every process with a :class:`WorkerContext`
(rank, world size, device) and returns rank 0's result to the caller. The launch is the one
training uses too (:func:`dino_pipe.distributed.launch`): under torchrun/SLURM this process joins the
job as launched; otherwise ``gpus=N`` spawns N processes (NCCL), ``gpus=0, procs=N`` spawns N
CPU processes (gloo), and a single process runs in place without a process group.

A :class:`~dino_pipe.errors.UserError` raised in any spawned worker reaches the caller as the
same one-line UserError; the other workers are stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from dino_pipe.distributed import DistEnv, launch


@dataclass
class WorkerContext:
    """Where this worker runs: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: DistEnv) -> "WorkerContext":
        return cls(env.rank, env.world_size, env.torch_device())


def _as_worker(env: DistEnv, fn: Callable[..., Any], args: tuple) -> Any:
    return fn(WorkerContext.from_env(env), *args)


def run_workers(fn: Callable[..., Any], *, gpus: int = 0, procs: int = 1, args: tuple = ()) -> Any:
    """``fn(ctx, *args)`` on every process; rank 0's (picklable) return value, None on other launched ranks."""
    return launch(_as_worker, (fn, args), gpus=gpus, procs=procs)
