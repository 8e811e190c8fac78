"""The checkpoints of a training run: when to save, what each rank contributes, resume, RNG states.

:class:`CheckpointManager` is the training side; the file itself (format, atomic write, the
``weights_only`` read that evaluation uses too) is :mod:`dino_pipe.runs.checkpoint_file`, the run
folder's names :mod:`dino_pipe.runs.run_dir`. The trainer contributes
``student``/``teacher``/``optimizer``/``scaler``/``objective`` (the objective's own ``state_dict``;
``DINOTrainer.state_dict``), the loader its position (``ViewLoader.state_dict``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dino_pipe.errors import UserError
from dino_pipe.runs.checkpoint_file import previous_hint, save_checkpoint
from dino_pipe.runs.run_dir import checkpoint_dir, checkpoint_path, config_differences, list_checkpoints, mark_run_dir

# -- random number generator states, stored as tensors/ints so weights_only loading works -------


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The process's torch / CUDA / numpy / python RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64)},
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), None))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# -- the checkpoint manager of a training run ----------------------------------------------------

def _per_rank(ckpt: dict, key: str, rank: int, world_size: int) -> Any:
    ranks = ckpt.get(f"{key}_ranks")
    if ranks and len(ranks) == world_size:
        return ranks[rank]
    return ckpt[key]


class CheckpointManager:
    """A run's checkpoints: the latest one and whether it may be resumed, restoring it, when to
    save, and what each rank contributes to a save (the trainer's model, optimizer, scaler and
    objective state; every rank's loader position and RNG states), written atomically with the newest
    ``train.keep_checkpoints`` kept. ``last`` is the newest checkpoint of the run (None before one)."""

    def __init__(self, run_dir: Path, cfg, env, data_identity: str | None = None, data_path: str | None = None):
        self.run_dir, self.cfg, self.env = Path(run_dir), cfg, env
        self.data_identity = data_identity  # what the data holds (recorded in each save, checked on resume)
        self.data_path = data_path
        self.last: Path | None = None

    def prepare(self) -> None:
        """Rank 0, before the first write: mark the folder as a run, drop temp files of a killed save."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mark_run_dir(self.run_dir)
        for stale in checkpoint_dir(self.run_dir).glob(".step-*.tmp"):  # left by a run killed mid-write
            stale.unlink(missing_ok=True)

    def find_resume(self) -> Path | None:
        """The run's newest checkpoint, as rank 0 sees it (broadcast to every rank)."""
        found = list_checkpoints(self.run_dir) if self.env.is_main else []
        path = str(found[-1]) if found else None
        if self.env.world_size > 1:
            import torch.distributed as dist

            box = [path]
            dist.broadcast_object_list(box, src=0)
            path = box[0]
        self.last = Path(path) if path else None
        return self.last

    def check_resumable(self, ckpt: dict, extend: bool) -> None:
        """Refuse to resume a run of another config or process count (``extend``: other epochs allowed)."""
        cfg, resume = self.cfg, self.last
        diffs = config_differences(ckpt["config"], cfg.to_dict())
        epochs_changed = [d for d in diffs if d.startswith("train.epochs:")]
        if extend:
            diffs = [d for d in diffs if not d.startswith("train.epochs:")]
        elif epochs_changed and len(diffs) == 1:
            raise UserError(f"{self.run_dir} holds a run of {ckpt['config']['train']['epochs']} epochs; to train it to "
                            f"{cfg.train.epochs} epochs add --extend (the schedules are then recomputed for "
                            f"{cfg.train.epochs} epochs), or use a new --out")
        if diffs:
            raise UserError(f"{self.run_dir} holds a run with a different config ({'; '.join(diffs[:3])}); "
                            "rerun with the same config to resume, or use a new --out")
        trained_on = ckpt.get("data_identity")  # absent in checkpoints written before it was recorded
        if trained_on and self.data_identity and trained_on != self.data_identity:
            raise UserError(f"{self.run_dir} was trained on other data ({ckpt.get('data_path')}, content "
                            f"{trained_on}; the --data given holds {self.data_identity}); resume with the data it was "
                            "trained on, or use a new --out")
        if ckpt.get("world_size", 1) != self.env.world_size:
            raise UserError(f"{resume} was written by {ckpt.get('world_size')} processes; resume with the same "
                            f"number (not {self.env.world_size}) or use a new --out")

    def restore(self, ckpt: dict, trainer, loader) -> int:
        """Put the trainer, this rank's loader position and RNG states back; return the step to continue from."""
        cfg, env, resume = self.cfg, self.env, self.last
        try:
            trainer.load_state_dict(ckpt)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:  # weights that do not fit the stored config
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise UserError(
                f"{resume}: its weights do not fit its config ({reason}); {previous_hint(resume)}"
            ) from None
        step = int(ckpt["step"])
        old_epochs = int(ckpt["config"]["train"]["epochs"])
        if old_epochs != cfg.train.epochs:
            if step > trainer.total_steps:
                raise UserError(f"--extend: {resume} is at step {step}, beyond {cfg.train.epochs} epochs "
                                f"({trainer.total_steps} steps); give more epochs than the run has done")
            if env.is_main:
                from dino_pipe.progress import console

                console.print(f"extending {self.run_dir} from {old_epochs} to {cfg.train.epochs} epochs at step "
                              f"{step}: the lr, weight-decay, teacher-momentum and teacher-temperature schedules "
                              f"are recomputed for {cfg.train.epochs} epochs", highlight=False, soft_wrap=True)
        loader.load_state_dict(_per_rank(ckpt, "data", env.rank, env.world_size))
        set_rng_state(_per_rank(ckpt, "rng", env.rank, env.world_size), trainer.device)
        return step

    def due(self, n: int, steps_per_epoch: int, stop_at: int) -> bool:
        """Save after the 1-based step ``n``: every ``train.checkpoint_every_steps``, each epoch end, the end."""
        every = self.cfg.train.checkpoint_every_steps
        return bool((every and n % every == 0) or n % steps_per_epoch == 0 or n == stop_at)

    def save(self, trainer, loader, step: int, steps_per_epoch: int) -> None:
        """Every rank contributes its RNG states and loader position; rank 0 writes the file."""
        from dino_pipe import distributed as D

        env = self.env
        rngs = D.all_gather_objects(rng_state(trainer.device), env)
        datas = D.all_gather_objects(loader.state_dict(), env)
        if env.is_main:
            state = {"config": self.cfg.to_dict(), "step": step, "epoch": step // steps_per_epoch,
                     "world_size": env.world_size, **trainer.state_dict(),
                     "rng": rngs[0], "rng_ranks": rngs, "data": datas[0], "data_ranks": datas,
                     "data_identity": self.data_identity, "data_path": self.data_path}
            self.last = save_checkpoint(self.run_dir, state, keep=self.cfg.train.keep_checkpoints)
        D.barrier(env)
        if not env.is_main:
            self.last = checkpoint_path(self.run_dir, step)
