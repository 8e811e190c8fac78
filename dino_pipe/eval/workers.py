"""Run an evaluation on N local processes: one per GPU (NCCL) or N CPU processes (gloo).

:func:`run_workers` calls ``fn(ctx, *args)`` in every process with a :class:`WorkerContext`
(rank, world size, device) and returns rank 0's result to the caller. The launch follows the
trainer's rules (:mod:`dino_pipe.train.distributed`): under torchrun/SLURM this process joins the
job as launched; otherwise ``gpus=N`` spawns N processes (NCCL), ``gpus=0, procs=N`` spawns N
CPU processes (gloo), and a single process runs in place without a process group.

A :class:`~dino_pipe.errors.UserError` raised in any spawned worker reaches the caller as the
same one-line UserError; the other workers are stopped.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

from dino_pipe.cpus import available_cores
from dino_pipe.errors import UserError, os_error_message
from dino_pipe.train.distributed import (
    DistEnv,
    check_local_request,
    destroy_process_group,
    free_port,
    init_process_group,
    launched_env,
    quiet_spawn_log,
)


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


def default_gpus() -> int:
    """1 when a CUDA GPU is visible, else 0 (CPU)."""
    return 1 if torch.cuda.is_available() else 0


def _worker(rank: int, env: DistEnv, fn: Callable, args: tuple, outbox: str) -> None:
    env = DistEnv(rank=rank, world_size=env.world_size, local_rank=rank, device=env.device,
                  master_addr=env.master_addr, master_port=env.master_port, launcher="local")
    if env.device == "cpu":
        torch.set_num_threads(max(1, available_cores() // env.world_size))
    init_process_group(env)
    try:
        value = fn(WorkerContext.from_env(env), *args)
        if rank == 0:
            with open(os.path.join(outbox, "result.pkl"), "wb") as f:
                pickle.dump(value, f)
    except (UserError, OSError) as e:  # one line from the parent, as in a single process
        with open(os.path.join(outbox, f"error-{rank}.txt"), "w") as f:
            f.write(os_error_message(e) if isinstance(e, OSError) else str(e))
        raise
    finally:
        destroy_process_group()


def run_workers(fn: Callable[..., Any], *, gpus: int = 0, procs: int = 1, args: tuple = ()) -> Any:
    """``fn(ctx, *args)`` on every process; rank 0's (picklable) return value, None on other launched ranks."""
    launched = launched_env(gpus)
    if launched is not None:  # torchrun / SLURM: join as launched
        init_process_group(launched)
        value = fn(WorkerContext.from_env(launched), *args)
        return value if launched.is_main else None
    device, world = check_local_request(gpus, procs)
    if world == 1:
        env = DistEnv(device=device)
        if device == "cuda":
            torch.cuda.set_device(0)
        return fn(WorkerContext.from_env(env), *args)
    env = DistEnv(world_size=world, device=device, master_port=free_port())
    with tempfile.TemporaryDirectory(prefix="dino-pipe-eval-") as outbox:
        try:
            with quiet_spawn_log():
                mp.start_processes(_worker, args=(env, fn, args, outbox), nprocs=world, join=True, start_method="spawn")
        except (mp.ProcessRaisedException, mp.ProcessExitedException):
            for name in sorted(os.listdir(outbox)):
                if name.startswith("error-"):
                    with open(os.path.join(outbox, name)) as f:
                        raise UserError(f.read()) from None
            raise
        with open(os.path.join(outbox, "result.pkl"), "rb") as f:
            return pickle.load(f)
