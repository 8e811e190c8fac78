"""One DINO training step and everything it owns: student, teacher, loss, optimizer, scaler, schedules.

``DINOTrainer(cfg, env, steps_per_epoch).step(views, step)`` runs, for global step ``step``::

    lr, wd, m, tau_t = schedules(step)
    t = teacher(views[:G])                      # the G global views only (the recipe's count), no gradient
    s = student(views)                          # all crops, same-resolution views batched
    terms = objective(s, t, tau_t)              # {"loss": total, "loss_dino": ..., "loss_koleo": ...}
    (sync steps: check loss is finite on every rank; stop otherwise)
    backward; clip (per parameter by default); drop last-layer grads in the first epoch(s)
    optimizer step; teacher <- m teacher + (1 - m) student; objective state update (the centre, all-reduced)

Host syncs. Only a step called with ``sync=True`` (the loop's logging and checkpoint steps) waits for
the device: it reads the total loss and stops on NaN/Inf before updating anything. Other steps queue their
work and return at once: the loss, its named terms (averaged over ranks in one all-reduce) and the gradient
norm stay device tensors, clipping and the loss use fixed shapes and Python counts, and a non-finite loss is
recorded on the device (first bad step and value) and raised by the next sync step, which the loop runs
before any checkpoint, so no checkpoint ever holds weights updated by a non-finite loss.

Mixed precision: ``bf16`` autocast (no scaler) or ``fp16`` autocast with a GradScaler on the GPU;
``fp32`` on the CPU. ``train.compile`` wraps the forward passes in ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from dino_pipe.config import Config
from dino_pipe.data.recipe import multicrop_recipe, n_global_views
from dino_pipe.distributed import DistEnv
from dino_pipe.errors import UserError
from dino_pipe.models import DINOModel, create_student_teacher
from dino_pipe.objective import DINOObjective
from dino_pipe.train.ema import TeacherEMA
from dino_pipe.train.optim import build_optimizer, cancel_last_layer_grads, clip_gradients, set_lr_wd
from dino_pipe.train.schedules import Schedules


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 on CUDA, fp32 on the CPU; fp16 needs CUDA."""
    if precision == "auto":
        return "bf16" if device == "cuda" else "fp32"
    if precision == "fp16" and device != "cuda":
        raise UserError("config key train.precision: fp16 needs a GPU (use fp32 or auto on the CPU)")
    return precision


class NonFiniteLoss(Exception):
    """Raised by :meth:`DINOTrainer.step` when the loss is NaN/Inf on any rank (nothing was updated)."""

    def __init__(self, step: int, value: float, what: str):
        super().__init__(f"loss is {value} at step {step}: {what}")
        self.step, self.value, self.what = step, value, what


@dataclass
class StepResult:
    loss: torch.Tensor  # 0-d, mean over ranks, on the device (float() it only when logging)
    terms: dict  # the objective's named terms ("loss_dino", "loss_koleo", ...): 0-d, mean over ranks, on the device
    grad_norm: torch.Tensor  # before clipping (0-d, on the device; float() it only when logging)
    teacher_probs: torch.Tensor  # [G*B, K] centered/sharpened teacher softmax (for diagnostics)
    values: dict  # the schedule values used: lr, wd, momentum, teacher_temp


class DINOTrainer:
    def __init__(self, cfg: Config, env: DistEnv, steps_per_epoch: int):
        self.cfg, self.env = cfg, env
        self.device = env.torch_device()
        self.precision = resolve_precision(cfg.train.precision, env.device)
        self.steps_per_epoch = steps_per_epoch
        self.global_batch = cfg.data.batch_size * env.world_size
        self.schedules = Schedules.from_config(cfg, steps_per_epoch, self.global_batch)
        self.total_steps = cfg.train.epochs * steps_per_epoch

        torch.manual_seed(cfg.train.seed)  # same init on every rank (teacher == student everywhere)
        student, teacher = create_student_teacher(cfg.model)
        if uses_sync_batchnorm(env) and _has_batchnorm(student):
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        self.student: DINOModel = student.to(self.device)
        self.teacher: DINOModel = teacher.to(self.device)
        self.teacher.train()  # as the reference: BatchNorm (ResNet) uses batch statistics; ViTs are unaffected
        self.n_global = n_global_views(multicrop_recipe(cfg.data))
        self.objective = DINOObjective(cfg.loss, cfg.model.out_dim, self.n_global).to(self.device)
        self.optimizer = build_optimizer(self.student, cfg.optim,
                                         fused=env.device == "cuda" and cfg.optim.optimizer == "adamw")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ema = TeacherEMA(self.student, self.teacher)
        # first non-finite step seen by a step without sync (0 = none) and its loss, on the device
        self._bad_step = torch.zeros((), dtype=torch.int64, device=self.device)
        self._bad_loss = torch.zeros((), device=self.device)

        if env.world_size > 1:
            self.student_ddp: nn.Module = DistributedDataParallel(
                self.student, device_ids=[env.local_rank] if env.device == "cuda" else None,
                broadcast_buffers=False)
        else:
            self.student_ddp = self.student
        self.student_fwd = self.student_ddp
        self.teacher_fwd = self.teacher
        if cfg.train.compile:
            self.student_fwd = torch.compile(self.student_ddp)
            self.teacher_fwd = torch.compile(self.teacher)

    # -- one step -------------------------------------------------------------------------------

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _prepare(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for v in views:
            v = v.to(self.device, non_blocking=True)
            if self.precision == "fp32" and v.dtype != torch.float32:
                v = v.float()
            out.append(v)
        return out

    def step(self, views: list[torch.Tensor], step: int, *, sync: bool = True) -> StepResult:
        """Run global step ``step`` (0-based) on this rank's ``views``.

        ``sync=True``: wait for the loss and raise NonFiniteLoss before updating when it (or an earlier
        step run without sync) is not finite. ``sync=False``: no host sync at all (see the module doc).
        """
        values = self.schedules.at(step)
        epoch = step // self.steps_per_epoch
        set_lr_wd(self.optimizer, values["lr"], values["wd"])
        views = self._prepare(views)
        with self.autocast():
            with torch.no_grad():
                teacher_out = self.teacher_fwd(views[: self.n_global])
            student_embed = None
            if self.objective.needs_embeddings:
                student_out, student_embed = self.student_fwd(views, return_embed=True)
            else:
                student_out = self.student_fwd(views)
        teacher_out, student_out = teacher_out.float(), student_out.float()
        # the targets once per step: for the loss, and afterwards for the diagnostics (the centre moves after both)
        teacher_probs = self.objective.teacher_probs(teacher_out, values["teacher_temp"])
        terms = self.objective(student_out, teacher_probs, student_embed)
        loss = terms["loss"]

        means = torch.stack([t.detach() for t in terms.values()])  # the total first, then the named terms
        if self.env.world_size > 1:  # every rank learns when any rank went non-finite (one all-reduce for all)
            dist.all_reduce(means)
            means /= self.env.world_size
        loss_mean = means[0]
        if sync:
            self.check_finite()
            loss_value = float(loss_mean)
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(step + 1, loss_value, _what_went_wrong(student_out, teacher_out, loss))
        else:
            first = (self._bad_step == 0) & ~torch.isfinite(loss_mean)
            self._bad_step = torch.where(first, step + 1, self._bad_step)
            self._bad_loss = torch.where(first, loss_mean, self._bad_loss)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.student, self.cfg.optim.clip_grad, self.cfg.optim.clip_mode)
        cancel_last_layer_grads(self.student, epoch, self.cfg.optim.freeze_last_layer_epochs)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(values["momentum"])
        self.objective.update(teacher_out)
        named = {k: means[i] for i, k in enumerate(terms) if k != "loss"}
        return StepResult(loss_mean, named, grad_norm.detach(), teacher_probs, values)

    def check_finite(self) -> None:
        """Raise NonFiniteLoss when a step run without sync had a non-finite loss (one host sync)."""
        bad = int(self._bad_step)
        if bad:
            raise NonFiniteLoss(bad, float(self._bad_loss), "found at the next synchronised step; the weights "
                                "updated since are not finite")

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "objective": {k: v.detach().cpu().clone() for k, v in self.objective.state_dict().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state["objective"])  # older layouts are mapped by load_checkpoint


def uses_sync_batchnorm(env: DistEnv) -> bool:
    """BatchNorm layers (ResNet, ``model.use_bn_in_head``) become SyncBatchNorm across GPU ranks, as the
    reference; torch's SyncBatchNorm has no CPU kernel, so gloo CPU ranks keep per-rank statistics."""
    return env.world_size > 1 and env.device == "cuda"


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _what_went_wrong(student_out: torch.Tensor, teacher_out: torch.Tensor, loss: torch.Tensor) -> str:
    s_ok = bool(torch.isfinite(student_out).all())
    t_ok = bool(torch.isfinite(teacher_out).all())
    if not s_ok and not t_ok:
        return "student and teacher outputs have non-finite values"
    if not s_ok:
        return "student output has non-finite values (teacher output is finite)"
    if not t_ok:
        return "teacher output has non-finite values (student output is finite)"
    if not bool(torch.isfinite(loss)):
        return "both outputs are finite but the loss is not (check the temperatures)"
    return "another rank's loss is non-finite"
