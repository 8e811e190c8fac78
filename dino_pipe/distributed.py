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
Training and evaluation both start their processes through :func:`launch`; :func:`is_main_process` is
the one answer to "is this rank 0 of the job?" before any process group exists.

Importing this module imports nothing heavy (torch loads inside the functions that need it), so the CLI
can ask :func:`is_main_process` before its arguments are checked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from dino_pipe.device import Device, torch_device
from dino_pipe.errors import UserError


@dataclass
class DistEnv:
    """How this process takes part: rank/world, its device, the rendezvous and the launcher name."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Device = "cpu"
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "local"  # local | torchrun | slurm

    @property
    def backend(self) -> str:
        return "nccl" if self.device == "cuda" else "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def torch_device(self):
        """This rank's ``torch.device``: ``cuda:local_rank``, or the CPU."""
        return torch_device(self.device, self.local_rank)


def _launched_rank(environ: Mapping[str, str]) -> tuple[str, int, int, int] | None:
    """(launcher, rank, world size, local rank) under torchrun or a multi-task SLURM step; None otherwise."""
    if all(k in environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return "torchrun", int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ["LOCAL_RANK"])
    if int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in environ:
        local = int(environ.get("SLURM_LOCALID", 0))
        return "slurm", int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"]), local
    return None


def is_main_process(environ: Mapping[str, str] | None = None) -> bool:
    """This process is rank 0 of its job, or the launcher of a local run (which becomes rank 0 or spawns the
    ranks): the process that prints once per job, shows progress and takes the output lock.

    The same rule :func:`launched_env` joins a job by: torchrun's ``RANK`` (with ``WORLD_SIZE`` and
    ``LOCAL_RANK``), else SLURM's ``SLURM_PROCID`` when ``SLURM_NTASKS > 1``; otherwise this process."""
    launched = _launched_rank(os.environ if environ is None else environ)
    return launched is None or launched[1] == 0


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


def launched_env(gpus: int, environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The rank this process already has under torchrun or SLURM, or None for a local launch.

    ``gpus`` only chooses the device there: 0 -> CPU/gloo, otherwise CUDA/NCCL (one GPU per rank,
    ``cuda:LOCAL_RANK``).
    """
    environ = os.environ if environ is None else environ
    launched = _launched_rank(environ)
    if launched is None:
        return None
    launcher, rank, world, local = launched
    if launcher == "torchrun":
        addr = environ.get("MASTER_ADDR", "127.0.0.1")
        port = int(environ.get("MASTER_PORT", 29500))
    else:
        addr = _slurm_master_addr(environ)
        port = int(environ.get("MASTER_PORT", 20000 + int(environ.get("SLURM_JOB_ID", "9500")) % 20000))
    device: Device = "cuda" if gpus != 0 else "cpu"
    if device == "cuda":
        n = _cuda_count()
        if local >= n:
            raise UserError(f"{launcher} rank {rank}: local rank {local} needs GPU {local}, but {n} CUDA devices "
                            "are visible (launch one process per GPU, or use --gpus 0 for CPU)")
    return DistEnv(rank, world, local, device, addr, port, launcher)


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_local_request(gpus: int, procs: int) -> tuple[Device, int]:
    """Validate ``--gpus``/``--procs`` for a local launch; return (device, number of processes)."""
    if gpus < 0 or procs < 1:
        raise UserError("--gpus must be >= 0 and --procs >= 1")
    if gpus == 0:
        return "cpu", procs
    n = _cuda_count()
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
    import torch
    import torch.distributed as dist

    if env.device == "cuda":
        torch.cuda.set_device(env.local_rank)
    if env.world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    kwargs = {}
    if env.device == "cuda":
        kwargs["device_id"] = torch.device("cuda", env.local_rank)
    dist.init_process_group(backend=env.backend, rank=env.rank, world_size=env.world_size,
                            **_rendezvous(env), **kwargs)


def _rendezvous(env: DistEnv) -> dict:
    """How the ranks find each other: ``tcp://MASTER_ADDR:MASTER_PORT``; in a torchrun job restarted after a
    lost process (``--max-restarts``) the same store keeps the previous attempt's addresses, so each
    attempt gets its own key prefix (else the new ranks would try to reach the dead ones)."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if env.launcher != "torchrun" or restart is None:
        return {"init_method": f"tcp://{env.master_addr}:{env.master_port}"}
    from datetime import timedelta

    import torch.distributed as dist

    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts it: all are clients
    store = dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=not agent_store and env.rank == 0,
                          timeout=timedelta(minutes=30), multi_tenant=True)
    return {"store": dist.PrefixStore(f"dino-pipe/attempt-{restart}", store)}


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj, env: DistEnv) -> list:
    """Every rank's ``obj`` (a list of length world_size); just ``[obj]`` for one process."""
    if env.world_size <= 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------------------------------------
# one launcher for training and evaluation
# ------------------------------------------------------------------------------------------------


def default_gpus() -> int:
    """``--gpus`` when not given: every visible GPU (0 = the CPU when none)."""
    return _cuda_count()


def launch(fn: Callable[..., Any], args: tuple = (), *, gpus: int | None = None, procs: int = 1,
           cpu_threads: int = 0) -> Any:
    """Run ``fn(env, *args)`` as every rank of the job, with the process group set up around it;
    return rank 0's (picklable) result, ``None`` on the other ranks of a torchrun/SLURM job.

    Under torchrun/SLURM this process joins the job as launched; otherwise ``gpus=N`` spawns N
    processes (NCCL), ``gpus=0, procs=N`` N CPU processes (gloo), and one process runs in place.
    ``cpu_threads``: torch threads per CPU process (0: torch's default in place, cores / N when
    spawned). A :class:`UserError` (or ``OSError``) in any spawned rank reaches the caller as the
    same one-line UserError with its exit code; the other ranks are stopped.
    """
    gpus = default_gpus() if gpus is None else gpus
    env = launched_env(gpus)
    if env is None:
        device, world = check_local_request(gpus, procs)
        if world > 1:
            return _spawn(fn, args, device, world, cpu_threads)
        env = DistEnv(device=device)
    return _run_rank(env, fn, args, cpu_threads)


def _run_rank(env: DistEnv, fn: Callable[..., Any], args: tuple, cpu_threads: int) -> Any:
    if env.device == "cpu" and cpu_threads > 0:
        import torch

        torch.set_num_threads(cpu_threads)
    init_process_group(env)
    try:
        return fn(env, *args)
    finally:
        destroy_process_group()


def _spawn(fn: Callable[..., Any], args: tuple, device: Device, world: int, cpu_threads: int) -> Any:
    import torch.multiprocessing as mp

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dino-pipe-ranks-") as outbox:
        try:
            with quiet_spawn_log():
                mp.start_processes(_spawned_rank, args=(world, device, port, fn, args, cpu_threads, outbox),
                                   nprocs=world, join=True, start_method="spawn")
        except (mp.ProcessRaisedException, mp.ProcessExitedException):
            for name in sorted(os.listdir(outbox)):
                if name.startswith("error-"):
                    with open(os.path.join(outbox, name), encoding="utf-8") as f:
                        code, message = f.read().split("\n", 1)
                    raise UserError(message, exit_code=int(code)) from None
            raise
        result = os.path.join(outbox, "result.pkl")
        if not os.path.exists(result):
            return None
        with open(result, "rb") as f:
            return pickle.load(f)


def _spawned_rank(rank: int, world: int, device: Device, port: int, fn: Callable[..., Any], args: tuple,
                  cpu_threads: int, outbox: str) -> None:
    import torch

    from dino_pipe.cpus import available_cores
    from dino_pipe.errors import os_error_message

    env = DistEnv(rank=rank, world_size=world, local_rank=rank, device=device, master_addr="127.0.0.1",
                  master_port=port, launcher="local")
    if device == "cpu" and cpu_threads == 0:
        torch.set_num_threads(max(1, available_cores() // world))
    try:
        value = _run_rank(env, fn, args, cpu_threads)
    except (UserError, OSError) as e:  # one line from the parent, as in a single process
        code, message = (e.exit_code, str(e)) if isinstance(e, UserError) else (1, os_error_message(e))
        with open(os.path.join(outbox, f"error-{rank}.txt"), "w", encoding="utf-8") as f:
            f.write(f"{code}\n{message}")
        raise SystemExit(code) from None
    if rank == 0:
        with open(os.path.join(outbox, "result.pkl"), "wb") as f:
            pickle.dump(value, f)
