"""``train(cfg, data, output, gpus=...)``: launch the processes, run the loop, checkpoint, log, resume.

The loop on each rank only wires its components:

* :class:`~dino_pipe.train.checkpoint.CheckpointManager` - the newest checkpoint and whether it may be
  resumed (weights, optimizer, scaler, center, step, RNG states and the data loader's position: the
  next batch is exactly the one that would have come next); when to save (every
  train.checkpoint_every_steps, at every epoch end and at the end) and what each rank contributes;
* :class:`~dino_pipe.train.metrics.MetricsLogger` - every train.log_every_steps a record
  (metrics.jsonl, TensorBoard, progress line), every train.collapse_check_every_steps a collapse check
  (uniform, one-hot and partial collapse), and the teacher's online k-NN at step 0 and every epoch end when
  eval.online_knn_train/val are set and the caller handed down the probe (``online_knn``: training imports
  nothing from :mod:`dino_pipe.eval`);
* :class:`~dino_pipe.train.trainer.DINOTrainer` - the step itself;
* :func:`~dino_pipe.distributed.launch` - the processes (shared with evaluation).

Only logging, collapse-check and checkpoint steps wait for the device (``DINOTrainer.step(sync=True)``);
the steps between queue their work without a host sync. A NaN/Inf loss stops the run naming the step,
what went non-finite and the last good checkpoint; no checkpoint or summary is written after it (on
a sync step before any weight is touched; a non-finite loss of a step between is caught by the next
sync step, which always comes before the next checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch
import yaml

from dino_pipe import distributed as D
from dino_pipe.atomic import atomic_write_json, atomic_write_text
from dino_pipe.config import Config, resolve_batch
from dino_pipe.cpus import training_threads
from dino_pipe.data.inputs import check_data, data_identity, local_data, make_loader
from dino_pipe.errors import UserError
from dino_pipe.lock import output_lock
from dino_pipe.runs.checkpoint_file import load_checkpoint
from dino_pipe.runs.run_dir import record_data
from dino_pipe.train.checkpoint import CheckpointManager
from dino_pipe.train.inputs import check_run_dir, default_online_knn
from dino_pipe.train.knn_hook import KnnProbeFactory
from dino_pipe.train.metrics import MetricsLogger, trim_metrics
from dino_pipe.train.trainer import DINOTrainer, NonFiniteLoss

# ------------------------------------------------------------------------------------------------
# launching
# ------------------------------------------------------------------------------------------------


def train(cfg: Config, data: str | Path, output: str | Path, *, gpus: int | None = None, procs: int = 1,
          progress: bool = True, extend: bool = False, online_knn: KnnProbeFactory | None = None) -> dict:
    """Train DINO on ``data`` (a shard set, or ``synthetic[:N]``) into run dir ``output``.

    ``gpus``: number of local GPUs (one process each, NCCL); ``None`` = all visible GPUs, 0 = CPU,
    where ``procs`` gloo processes run (default 1, in this process). Under torchrun or a
    multi-task SLURM step this process joins the job as launched. Rerunning on the same ``output``
    resumes from its newest checkpoint. ``extend``: the resumed run may have a different
    ``train.epochs`` (more, to train a finished run further); the schedules are recomputed for the
    new length. ``online_knn``: the teacher's online k-NN probe, ``factory(cfg, env)`` (the CLI passes
    :func:`dino_pipe.eval.online_knn.training_probe`); without it none is measured, none is turned on by
    default, and a config that names an online k-NN pair is refused. Returns the summary (also written to
    ``output/summary.json``).
    """
    first = D.is_main_process()  # the launcher, or rank 0 of a job
    data = check_data(local_data(data, cfg, progress and first))
    output = Path(output)
    check_run_dir(output)
    if online_knn is not None:
        cfg = default_online_knn(cfg, data)
    elif cfg.eval.online_knn_on:
        raise UserError("eval.online_knn_train/val are set, but train() was given no online_knn probe to measure "
                        "them: pass online_knn=dino_pipe.eval.online_knn.training_probe (as the CLI does)")
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", procs))  # CPU processes sharing this machine
    cpu_threads = training_threads(cfg.train.cpu_threads, cfg.data.threads, local_procs)
    with output_lock(output) if first else contextlib.nullcontext():  # one run per --out at a time
        return D.launch(run_worker, (cfg, data, output, progress, extend, online_knn), gpus=gpus, procs=procs,
                        cpu_threads=cpu_threads) or {}


def run_worker(env: D.DistEnv, cfg: Config, data, output: Path, progress: bool = True,
               extend: bool = False, online_knn: KnnProbeFactory | None = None) -> dict | None:
    """One rank's whole run (the process group is set up around it by :func:`D.launch`). Rank 0 returns the summary."""
    return _Run(env, resolve_batch(cfg, env.world_size), data, Path(output), progress, extend, online_knn).run()


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


class _Run:
    """One rank's run: wires the loader, the trainer, the checkpoint manager and the metrics logger."""

    def __init__(self, env: D.DistEnv, cfg: Config, data, output: Path, progress: bool, extend: bool = False,
                 online_knn: KnnProbeFactory | None = None):
        self.env, self.cfg, self.data, self.run_dir = env, cfg, data, Path(output)
        self.extend, self.online_knn = extend, online_knn
        self.show_progress = progress and env.is_main

    def run(self) -> dict | None:
        env, cfg, t_start = self.env, self.cfg, time.time()
        ckpts = CheckpointManager(self.run_dir, cfg, env, data_identity(self.data), str(self.data))
        resume = ckpts.find_resume()
        ckpt = load_checkpoint(resume) if resume else None
        if ckpt is not None:
            ckpts.check_resumable(ckpt, self.extend)
        loader = make_loader(self.data, cfg, env)
        steps_per_epoch = len(loader)
        if steps_per_epoch < 1:
            raise UserError(f"--data {self.data}: too few samples for one step of global batch "
                            f"{cfg.data.batch_size * env.world_size} (lower data.batch_size)")
        trainer = DINOTrainer(cfg, env, steps_per_epoch)
        stop_at = trainer.total_steps if cfg.train.max_steps <= 0 else min(trainer.total_steps, cfg.train.max_steps)
        if ckpt is not None and int(ckpt["step"]) >= stop_at:  # finished: change nothing
            return self._nothing_to_do(int(ckpt["step"]), stop_at, trainer.total_steps, loader)
        if ckpt is not None:
            step = ckpts.restore(ckpt, trainer, loader)
        else:
            step = 0
            torch.manual_seed(cfg.train.seed + 7919 * (env.rank + 1))  # per-rank randomness (drop path)
        self._prepare_run_dir(ckpts, ckpt)  # only now: a refused start leaves the folder as it was
        D.barrier(env)
        start_step = step
        with MetricsLogger(self.run_dir, cfg, env, steps_per_epoch, stop_at, step, self.show_progress,
                           teacher=trainer.teacher.backbone, online_knn=self.online_knn) as metrics:
            metrics.fetch_stats = getattr(loader, "stats", None)  # streaming: bytes, rate, prefetch depth
            while step < stop_at:
                it = iter(loader)
                while step < stop_at and (batch := metrics.next_batch(it)) is not None:
                    log_now, check_now = metrics.due(step + 1)
                    save_now = ckpts.due(step + 1, steps_per_epoch, stop_at)
                    res = self._step(trainer, batch, step, log_now or check_now or save_now, ckpts.last)
                    step += 1
                    metrics.after_step(step, res, log_now, check_now)
                    if save_now:
                        ckpts.save(trainer, loader, step, steps_per_epoch)
        fetched = D.all_gather_objects(loader.fetch_summary(), env) if hasattr(loader, "fetch_summary") else None
        if hasattr(loader, "close"):
            loader.close()
        summary = {"run_dir": str(self.run_dir), "steps": step, "steps_this_run": step - start_step,
                   "epochs": step / steps_per_epoch, **metrics.summary(step),
                   "last_checkpoint": str(ckpts.last) if ckpts.last else None,
                   "resumed_from": str(resume) if resume else None, "world_size": env.world_size,
                   "device": env.device, "precision": trainer.precision, "wall_s": time.time() - t_start}
        if fetched is not None:  # streaming: GETs and bytes per epoch, per rank
            summary["stream"] = {"per_rank": fetched}
        if env.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
            return summary
        return None

    # -- pieces ---------------------------------------------------------------------------------

    def _nothing_to_do(self, step: int, stop_at: int, total: int, loader) -> dict | None:
        """A rerun of a finished run: one line, nothing written; rank 0 returns the run's summary as it was.
        ``--extend`` to no more steps than done is refused (it would train nothing)."""
        if hasattr(loader, "close"):
            loader.close()
        cfg = self.cfg.train
        if self.extend and stop_at == total:
            where = "beyond" if step > total else "at the end of"
            raise UserError(f"--extend: {self.run_dir} is at step {step}, {where} {cfg.epochs} epochs ({total} steps): "
                            "nothing to train; give more epochs than the run has done (--epochs)")
        if stop_at < total:
            how = f"raise train.max_steps (now {cfg.max_steps}; 0 = no limit) to train on to step {total}"
        else:
            how = "use --extend with more --epochs to train further"
        if not self.env.is_main:
            return None
        from dino_pipe.progress import console

        console.print(f"{self.run_dir}: already at step {step} of {stop_at}; nothing to do, {how}",
                      highlight=False, soft_wrap=True)
        try:
            return json.loads((self.run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return {"run_dir": str(self.run_dir), "steps": step, "steps_this_run": 0}

    @staticmethod
    def _step(trainer: DINOTrainer, batch, step: int, sync: bool, last_checkpoint: Path | None):
        """One training step; only logging, collapse-check and checkpoint steps wait for the device."""
        try:
            return trainer.step(batch.views, step, sync=sync)
        except NonFiniteLoss as e:
            raise UserError(f"{e}; stopped without writing anything — last good checkpoint: "
                            f"{last_checkpoint if last_checkpoint else 'none (no checkpoint was written yet)'}",
                            exit_code=3) from None

    def _prepare_run_dir(self, ckpts: CheckpointManager, ckpt: dict | None) -> None:
        if not self.env.is_main:
            return
        ckpts.prepare()
        trim_metrics(self.run_dir, ckpt["step"] if ckpt is not None else None)
        (self.run_dir / "summary.json").unlink(missing_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        record_data(self.run_dir, self.data)
