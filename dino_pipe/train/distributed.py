"""Distributed setup: decide once how this process takes part in training, then init the process group.

Three ways to run, decided from the environment (the only module besides the CLI that reads it):

* **torchrun** (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` set) and
  **SLURM** (``srun`` with ``SLURM_NTASKS > 1``: ``SLURM_PROCID``, ``SLURM_NTASKS``,
  ``SLURM_LOCALID``; ``MASTER_ADDR`` from the environment or the first host of
  ``SLURM_JOB_NODELIST`` via ``scontrol show hostnames``): this process is one rank of a job
  launched by someone else; it joins it as launched.
* **local**: ``--gpus N`` starts N processes on this node (``torch.multiprocessing`` spawn, NCCL);
  ``--gpus 0 --procs N`` starts N CPU processes (gloo); N = 1 runs in the calling process.

The device is decided here (CUDA when GPUs are requested and present, else CPU) and passed down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dino_pipe.errors import UserError


@dataclass
class DistEnv:
    """How this process takes part: rank/world, its device, the rendezvous and the launcher name."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # "cpu" | "cuda"
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "local"  # local | torchrun | slurm

    @property
    def backend(self) -> str:
        return "nccl" if self.device == "cuda" else "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def torch_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.device == "cuda" else torch.device("cpu")


def _slurm_master_addr(environ) -> str:
    if environ.get("MASTER_ADDR"):
        return environ["MASTER_ADDR"]
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if nodelist and shutil.which("scontrol"):
        try:
            res = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 check=True, timeout=30)
            hosts = res.stdout.split()
            if hosts:
                return hosts[0]
        except (subprocess.SubprocessError, OSError):
            pass
    if nodelist and "[" not in nodelist and "," not in nodelist:
        return nodelist
    raise UserError("SLURM job: cannot find the master host; export MASTER_ADDR (or make `scontrol` available)")


def launched_env(gpus: int, environ=None) -> DistEnv | None:
    """The rank this process already has under torchrun or SLURM, or None for a local launch.

    ``gpus`` only chooses the device there: 0 -> CPU/gloo, otherwise CUDA/NCCL (one GPU per rank,
    ``cuda:LOCAL_RANK``).
    """
    environ = os.environ if environ is None else environ
    if all(k in environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        rank, world, local = int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ["LOCAL_RANK"])
        addr = environ.get("MASTER_ADDR", "127.0.0.1")
        port = int(environ.get("MASTER_PORT", 29500))
        launcher = "torchrun"
    elif int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in environ:
        rank, world = int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"])
        local = int(environ.get("SLURM_LOCALID", 0))
        addr = _slurm_master_addr(environ)
        port = int(environ.get("MASTER_PORT", 20000 + int(environ.get("SLURM_JOB_ID", "9500")) % 20000))
        launcher = "slurm"
    else:
        return None
    device = "cuda" if gpus != 0 else "cpu"
    if device == "cuda":
        n = torch.cuda.device_count()
        if local >= n:
            raise UserError(f"{launcher} rank {rank}: local rank {local} needs GPU {local}, but {n} CUDA devices "
                            "are visible (launch one process per GPU, or use --gpus 0 for CPU)")
    return DistEnv(rank, world, local, device, addr, port, launcher)


def check_local_request(gpus: int, procs: int) -> tuple[str, int]:
    """Validate ``--gpus``/``--procs`` for a local launch; return (device, number of processes)."""
    if gpus < 0 or procs < 1:
        raise UserError("--gpus must be >= 0 and --procs >= 1")
    if gpus == 0:
        return "cpu", procs
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > n:
        raise UserError(f"--gpus {gpus} requested but {n} CUDA device{'s' if n != 1 else ''} visible on this machine "
                        "(use --gpus 0 to train on the CPU)")
    return "cuda", gpus


@contextlib.contextmanager
def quiet_spawn_log():
    """Silence torch's "Terminating process ... via SIGTERM" warning while local processes run: when one
    fails, the others are stopped on purpose and the user gets the failing rank's one-line error."""
    log = logging.getLogger("torch.multiprocessing.spawn")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(env: DistEnv) -> None:
    """Set the CUDA device and join the process group (no-op for a single process)."""
    if env.device == "cuda":
        torch.cuda.set_device(env.local_rank)
    if env.world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    kwargs = {}
    if env.device == "cuda":
        kwargs["device_id"] = torch.device("cuda", env.local_rank)
    dist.init_process_group(backend=env.backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                            rank=env.rank, world_size=env.world_size, **kwargs)


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj, env: DistEnv) -> list:
    """Every rank's ``obj`` (a list of length world_size); just ``[obj]`` for one process."""
    if env.world_size <= 1:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()
