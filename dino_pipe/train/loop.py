"""``train(cfg, data, output, gpus=...)``: launch the processes, run the loop, checkpoint, log, resume.

The loop on each rank::

    resume from RUN_DIR's newest checkpoint if there is one (weights, optimizer, scaler, center,
    step, RNG states and the data loader's position: the next batch is exactly the one that
    would have come next)
    for each batch until epochs * steps_per_epoch (or train.max_steps) steps:
        DINOTrainer.step -> log every train.log_every_steps (metrics.jsonl, TensorBoard, progress bar),
        collapse check every train.collapse_check_every_steps (uniform, one-hot and partial collapse),
        online k-NN of the teacher at step 0 and every epoch end when eval.online_knn_train/val are set,
        checkpoint every train.checkpoint_every_steps, at every epoch end and at the end

A NaN/Inf loss stops the run before any weight is touched, naming the step, what went non-finite
and the last good checkpoint; no checkpoint or summary is written after it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from dino_pipe.atomic import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from dino_pipe.config import Config
from dino_pipe.cpus import available_cores
from dino_pipe.errors import UserError
from dino_pipe.train import distributed as D
from dino_pipe.train.checkpoint import checkpoint_dir, list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from dino_pipe.train.diagnostics import CollapseMonitor, PartialCollapseWatch
from dino_pipe.train.trainer import DINOTrainer, NonFiniteLoss

# Config keys that may differ when a run is resumed (they do not change the computation).
RESUMABLE_CHANGES = ("train.max_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
                     "train.log_every_steps", "train.collapse_check_every_steps", "train.compile",
                     "data.threads", "data.prefetch", "data.hw_decoder_load", "eval.")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def parse_synthetic(data: str | Path) -> int | None:
    """``"synthetic"`` / ``"synthetic:N"`` -> N random samples per epoch (default 4096); else None."""
    s = str(data)
    if s == "synthetic":
        return 4096
    if s.startswith("synthetic:"):
        try:
            return int(s.split(":", 1)[1])
        except ValueError:
            raise UserError(f"--data {s}: expected synthetic:NUMBER_OF_SAMPLES") from None
    return None


def check_data(data: str | Path) -> None:
    """Fail early (before any process starts) when the shard set is missing."""
    if parse_synthetic(data) is not None:
        return
    p = Path(data)
    if not p.exists():
        raise UserError(f"--data {p}: no such shard set (make one with `dino-pipe shard`)")
    if p.is_dir() and not (p / "manifest.json").is_file():
        raise UserError(f"--data {p}: not a shard set (no manifest.json; make one with `dino-pipe shard`)")


def make_loader(data: str | Path, cfg: Config, env: D.DistEnv, **kwargs):
    """The real DALI ViewLoader over a shard set, or the synthetic loader for ``synthetic[:N]``."""
    n = parse_synthetic(data)
    if n is not None:
        from dino_pipe.data.synthetic import SyntheticViewLoader

        return SyntheticViewLoader(cfg.data, num_samples=n, device=env.device, device_id=env.local_rank,
                                   rank=env.rank, world_size=env.world_size, **kwargs)
    from dino_pipe.data.loader import ViewLoader

    return ViewLoader(Path(data), cfg.data, device=env.device, device_id=env.local_rank, rank=env.rank,
                      world_size=env.world_size, **kwargs)


# ------------------------------------------------------------------------------------------------
# launching
# ------------------------------------------------------------------------------------------------


def train(cfg: Config, data: str | Path, output: str | Path, *, gpus: int | None = None, procs: int = 1,
          progress: bool = True) -> dict:
    """Train DINO on ``data`` (a shard set, or ``synthetic[:N]``) into run dir ``output``.

    ``gpus``: number of local GPUs (one process each, NCCL); ``None`` = all visible GPUs, 0 = CPU,
    where ``procs`` gloo processes run (default 1, in this process). Under torchrun or a
    multi-task SLURM step this process joins the job as launched. Rerunning on the same ``output``
    resumes from its newest checkpoint. Returns the summary (also written to ``output/summary.json``).
    """
    check_data(data)
    output = Path(output)
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    env = D.launched_env(gpus)
    if env is not None:
        return run_worker(env, cfg, data, output, progress) or {}
    device, nprocs = D.check_local_request(gpus, procs)
    if nprocs == 1:
        return run_worker(D.DistEnv(device=device), cfg, data, output, progress)
    return _spawn(device, nprocs, cfg, data, output, progress)


def _spawn(device: str, nprocs: int, cfg: Config, data, output: Path, progress: bool) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = D.free_port()
    try:
        mp.spawn(_spawn_entry, args=(nprocs, device, port, cfg, str(data), str(output), progress, queue),
                 nprocs=nprocs, join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        while not queue.empty():
            kind, *payload = queue.get()
            if kind == "error":
                raise UserError(payload[0], exit_code=payload[1]) from None
        raise
    result: dict = {}
    while not queue.empty():
        kind, *payload = queue.get()
        if kind == "ok" and payload[0]:
            result = payload[0]
    return result


def _spawn_entry(local_rank: int, world: int, device: str, port: int, cfg: Config, data: str, output: str,
                 progress: bool, queue) -> None:
    if device == "cpu" and cfg.train.cpu_threads == 0:
        torch.set_num_threads(max(1, available_cores() // world))
    env = D.DistEnv(rank=local_rank, world_size=world, local_rank=local_rank, device=device,
                    master_addr="127.0.0.1", master_port=port, launcher="local")
    try:
        summary = run_worker(env, cfg, data, Path(output), progress)
    except UserError as e:
        queue.put(("error", str(e), e.exit_code))
        raise SystemExit(e.exit_code) from None
    if env.is_main:
        queue.put(("ok", summary))


def run_worker(env: D.DistEnv, cfg: Config, data, output: Path, progress: bool = True) -> dict | None:
    """One rank's whole run (process group set up and torn down here). Rank 0 returns the summary."""
    if env.device == "cpu" and cfg.train.cpu_threads > 0:
        torch.set_num_threads(cfg.train.cpu_threads)
    D.init_process_group(env)
    try:
        return _Run(env, cfg, data, output, progress).run()
    finally:
        D.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not (prefix.endswith("arch_kwargs.") or k == "arch_kwargs"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ and that matter for the computation."""
    a, b = _flat(old), _flat(new)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k) and not any(k.startswith(p) for p in RESUMABLE_CHANGES):
            diffs.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return diffs


class _Run:
    def __init__(self, env: D.DistEnv, cfg: Config, data, output: Path, progress: bool):
        self.env, self.cfg, self.data, self.run_dir = env, cfg, data, Path(output)
        self.show_progress = progress and env.is_main

    # -- resume ---------------------------------------------------------------------------------

    def _find_resume(self) -> Path | None:
        found = list_checkpoints(self.run_dir) if self.env.is_main else []
        path = str(found[-1]) if found else None
        if self.env.world_size > 1:
            import torch.distributed as dist

            box = [path]
            dist.broadcast_object_list(box, src=0)
            path = box[0]
        return Path(path) if path else None

    def _prepare_run_dir(self, resume: Path | None, ckpt: dict | None) -> None:
        if not self.env.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in checkpoint_dir(self.run_dir).glob(".step-*.tmp"):  # left by a run killed mid-write
            stale.unlink(missing_ok=True)
        metrics = self.run_dir / "metrics.jsonl"
        if ckpt is None:
            if metrics.exists():
                metrics.unlink()
        else:  # drop records of steps after the checkpoint: they will be logged again
            kept = [r for r in read_jsonl(metrics) if r.get("step", 0) <= ckpt["step"]]
            atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))
        (self.run_dir / "summary.json").unlink(missing_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

    def run(self) -> dict | None:
        env, cfg = self.env, self.cfg
        t_start = time.time()
        resume = self._find_resume()
        ckpt = load_checkpoint(resume) if resume else None
        if ckpt is not None:
            diffs = config_differences(ckpt["config"], cfg.to_dict())
            if diffs:
                raise UserError(f"{self.run_dir} holds a run with a different config ({'; '.join(diffs[:3])}); "
                                "rerun with the same config to resume, or use a new --output")
            if ckpt.get("world_size", 1) != env.world_size:
                raise UserError(f"{resume} was written by {ckpt.get('world_size')} processes; resume with the same "
                                f"number (not {env.world_size}) or use a new --output")
        self._prepare_run_dir(resume, ckpt)
        D.barrier(env)

        loader = make_loader(self.data, cfg, env)
        steps_per_epoch = len(loader)
        if steps_per_epoch < 1:
            raise UserError(f"--data {self.data}: too few samples for one step of global batch "
                            f"{cfg.data.batch_size * env.world_size} (lower data.batch_size)")
        trainer = DINOTrainer(cfg, env, steps_per_epoch)
        step = 0
        if ckpt is not None:
            trainer.load_state_dict(ckpt)
            step = int(ckpt["step"])
            loader.load_state_dict(_per_rank(ckpt, "data", env))
            set_rng_state(_per_rank(ckpt, "rng", env), trainer.device)
        else:
            torch.manual_seed(cfg.train.seed + 7919 * (env.rank + 1))  # per-rank randomness (drop path)
        stop_at = trainer.total_steps if cfg.train.max_steps <= 0 else min(trainer.total_steps, cfg.train.max_steps)
        self.last_checkpoint = resume
        monitor = CollapseMonitor(cfg.model.out_dim)
        partial = PartialCollapseWatch(cfg.model.out_dim)
        last_check_step = step
        online, knn_info = self._online_knn(trainer, step, steps_per_epoch)
        tb = self._tensorboard()
        start_step = step
        last_loss = float("nan")
        images_per_step = cfg.data.batch_size * env.world_size
        window_t, window_wait, window_steps = time.perf_counter(), 0.0, 0
        total_wait, t_loop = 0.0, time.perf_counter()
        rates: dict[str, float] = {"images_per_s": 0.0, "data_wait_pct": 0.0}
        collapse_stats: dict = {}
        last_warning: str | None = None

        progress = self._progress(stop_at, start_step)
        with progress:
            task = progress.tasks[0].id if progress.tasks else None
            while step < stop_at:
                it = iter(loader)
                while step < stop_at:
                    t0 = time.perf_counter()
                    try:
                        batch = next(it)
                    except StopIteration:
                        break
                    wait = time.perf_counter() - t0
                    window_wait += wait
                    total_wait += wait
                    try:
                        res = trainer.step(batch.views, step)
                    except NonFiniteLoss as e:
                        last = self.last_checkpoint
                        raise UserError(f"{e}; stopped without writing anything — last good checkpoint: "
                                        f"{last if last else 'none (no checkpoint was written yet)'}",
                                        exit_code=3) from None
                    step += 1
                    window_steps += 1
                    last_loss = res.loss
                    monitor.observe(res.teacher_probs)
                    if step % cfg.train.collapse_check_every_steps == 0 or step == stop_at:
                        window_images = 2 * cfg.data.batch_size * (step - last_check_step)  # this rank's teacher outputs
                        last_check_step = step
                        collapse_stats = monitor.summary()
                        warning = monitor.warning(collapse_stats) if env.is_main else None
                        kind = warning.split(" (")[0] if warning else None
                        if warning and kind != last_warning:  # once per episode, not every check
                            from dino_pipe.progress import console

                            console.print(f"[yellow]warning[/] step {step}: {warning}", highlight=False)
                        last_warning = kind
                        if collapse_stats:
                            collapse_stats["collapse_warning"] = warning
                            partial_warning = partial.update(collapse_stats, step, window_images)
                            if partial_warning and env.is_main:
                                from dino_pipe.progress import console

                                console.print(f"[yellow]warning[/] step {step}: {partial_warning}", highlight=False)
                            collapse_stats["partial_collapse_warning"] = partial_warning
                    if step % cfg.train.log_every_steps == 0 or step == stop_at:
                        now = time.perf_counter()
                        dt = max(now - window_t, 1e-9)
                        rates = {"images_per_s": window_steps * images_per_step / dt,
                                 "data_wait_pct": 100.0 * window_wait / dt}
                        window_t, window_wait, window_steps = now, 0.0, 0
                        record = {"step": step, "epoch": step / steps_per_epoch, "loss": res.loss,
                                  **res.values, "grad_norm": float(res.grad_norm), **rates, **collapse_stats,
                                  "time": time.time()}
                        if env.is_main:
                            append_jsonl(self.run_dir / "metrics.jsonl", record)
                            if tb is not None:
                                for k, v in record.items():
                                    if k not in ("step", "time") and isinstance(v, (int, float)):
                                        tb.add_scalar(f"train/{k}", v, step)
                        collapse_stats = {}
                    if task is not None:
                        v = res.values
                        progress.update(task, completed=step, info=(
                            f"ep {step // steps_per_epoch} loss {res.loss:.4f} lr {v['lr']:.2e} wd {v['wd']:.3f} "
                            f"m {v['momentum']:.4f} τt {v['teacher_temp']:.3f} {rates['images_per_s']:.0f} img/s "
                            f"wait {rates['data_wait_pct']:.0f}%{knn_info}"))
                    if online is not None and online.due(step, steps_per_epoch, stop_at):
                        knn_info = self._measure_knn(online, trainer, step, steps_per_epoch)
                    every = cfg.train.checkpoint_every_steps
                    if (every and step % every == 0) or step % steps_per_epoch == 0 or step == stop_at:
                        self._checkpoint(trainer, loader, step, steps_per_epoch)
        if tb is not None:
            tb.close()
        if hasattr(loader, "close"):
            loader.close()
        if online is not None:
            online.close()
        elapsed = time.perf_counter() - t_loop
        done = step - start_step
        summary = {
            "run_dir": str(self.run_dir),
            "steps": step,
            "steps_this_run": done,
            "epochs": step / steps_per_epoch,
            "final_loss": last_loss,
            "images_per_s": done * images_per_step / elapsed if elapsed > 0 and done else 0.0,
            "data_wait_pct": 100.0 * total_wait / elapsed if elapsed > 0 else 0.0,
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "resumed_from": str(resume) if resume else None,
            "world_size": env.world_size,
            "device": env.device,
            "precision": trainer.precision,
            "wall_s": time.time() - t_start,
        }
        if env.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
            return summary
        return None

    # -- pieces ---------------------------------------------------------------------------------

    def _online_knn(self, trainer: DINOTrainer, step: int, steps_per_epoch: int):
        """``(OnlineKnn or None, progress text)``; measures step 0 on a fresh run, else reads it from metrics.jsonl."""
        from dino_pipe.eval import online_knn

        self.knn0: float | None = None
        if not online_knn.enabled(self.cfg):
            return None, ""
        from dino_pipe.eval.workers import WorkerContext

        online = online_knn.OnlineKnn(self.cfg, WorkerContext.from_env(self.env))
        if step == 0:
            return online, self._measure_knn(online, trainer, 0, steps_per_epoch)
        first = [r for r in read_jsonl(self.run_dir / "metrics.jsonl") if r.get("step") == 0 and "knn_top1" in r]
        self.knn0 = first[0]["knn_top1"] if first else None
        return online, ""

    def _measure_knn(self, online, trainer: DINOTrainer, step: int, steps_per_epoch: int) -> str:
        """Measure the teacher's k-NN, append it to metrics.jsonl, warn when below step 0; the progress text."""
        m = online.measure(trainer.teacher.backbone)
        if step == 0:
            self.knn0 = m["knn_top1"]
        knn0 = self.knn0
        warning = None
        if knn0 is not None and step > 0 and m["knn_top1"] < knn0:
            warning = (f"online k-NN top-1 {m['knn_top1']:.1f}% (k={m['knn_k']}) is below the untrained network's "
                       f"{knn0:.1f}% at step 0: training is making the features worse (see the collapse numbers in "
                       "metrics.jsonl; a softer teacher, more teacher momentum or a lower lr may help)")
        if self.env.is_main:
            record = {"step": step, "epoch": step / steps_per_epoch, **m, "knn_warning": warning, "time": time.time()}
            append_jsonl(self.run_dir / "metrics.jsonl", record)
            if warning:
                from dino_pipe.progress import console

                console.print(f"[yellow]warning[/] step {step}: {warning}", highlight=False)
        return f" knn {m['knn_top1']:.1f}%"

    def _checkpoint(self, trainer: DINOTrainer, loader, step: int, steps_per_epoch: int) -> None:
        env = self.env
        rngs = D.all_gather_objects(rng_state(trainer.device), env)
        datas = D.all_gather_objects(loader.state_dict(), env)
        if env.is_main:
            state = {"config": self.cfg.to_dict(), "step": step, "epoch": step // steps_per_epoch,
                     "world_size": env.world_size, **trainer.state_dict(),
                     "rng": rngs[0], "rng_ranks": rngs, "data": datas[0], "data_ranks": datas}
            self.last_checkpoint = save_checkpoint(self.run_dir, state, keep=self.cfg.train.keep_checkpoints)
        D.barrier(env)
        if not env.is_main:
            from dino_pipe.train.checkpoint import checkpoint_path

            self.last_checkpoint = checkpoint_path(self.run_dir, step)

    def _progress(self, total: int, completed: int):
        from rich.progress import TextColumn

        from dino_pipe.progress import make_progress

        p = make_progress("step", TextColumn("{task.fields[info]}"), disable=not self.show_progress)
        p.add_task("train", total=total, completed=completed, info="")
        return p

    def _tensorboard(self):
        if not self.env.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed: metrics.jsonl only
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))


def _per_rank(ckpt: dict, key: str, env: D.DistEnv) -> Any:
    ranks = ckpt.get(f"{key}_ranks")
    if ranks and len(ranks) == env.world_size:
        return ranks[env.rank]
    return ckpt[key]
