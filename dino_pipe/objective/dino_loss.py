"""The DINO loss: cross-entropy between a centered, sharpened teacher and the student, over crop pairs.

For a batch of ``B`` images with ``V`` student views (``T`` global + ``V-T`` local) and ``T`` teacher
(global) views (``n_teacher_views``, the recipe's global count; DINO: 2), with head outputs
``s_v = g_student(x_v)`` and ``t_i = g_teacher(x_i)`` in R^K::

    P_t,i = softmax((t_i - c) / tau_t)          teacher: centered, sharpened    (no gradient)
    log P_s,v = log_softmax(s_v / tau_s)         student
    L = 1 / (T V - T) * sum_{i < T} sum_{v != i} mean_b [ - sum_k P_t,i[b,k] log P_s,v[b,k] ]

Same-view pairs (teacher view i with student view i) are skipped. The center is an exponential
moving average of the teacher's raw outputs over the whole global batch (all ranks)::

    c <- m c + (1 - m) * (1 / (T B W)) * sum_{ranks} sum_{i, b} t_i[b]       (m = 0.9)

With ``centering="sinkhorn"`` the teacher targets are instead Sinkhorn-Knopp normalised over the global batch
(:mod:`dino_pipe.objective.sinkhorn`); the EMA centre is then still kept (for diagnostics) but not used.

Shapes: ``student_out [V*B, K]`` (view-major: rows ``v*B .. v*B+B-1`` are view ``v``),
``teacher_out [T*B, K]``, ``center [1, K]``. The loss is computed in float32.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from dino_pipe.objective.sinkhorn import sinkhorn_knopp


class DINOLoss(nn.Module):
    """Cross-entropy of student views against centered/sharpened teacher global views.

    Args:
        out_dim: K, the number of prototypes (head output size).
        student_temp: tau_s (0.1).
        center_momentum: m, the EMA momentum of the center (0.9).
        n_teacher_views: T, the number of teacher (global) views: the recipe's count (2 in DINO).
        centering: ``"ema"`` (the reference: subtract the EMA centre) or ``"sinkhorn"`` (Sinkhorn-Knopp).
        sinkhorn_iters: Sinkhorn-Knopp iterations (3, as DINOv2).

    ``forward(student_out, teacher_out, teacher_temp)`` returns the scalar loss and (unless
    ``update_center=False``) updates the center buffer from ``teacher_out`` afterwards, averaging
    over all ranks when ``torch.distributed`` is initialized.
    """

    def __init__(self, out_dim: int, *, student_temp: float = 0.1, center_momentum: float = 0.9,
                 n_teacher_views: int = 2, centering: Literal["ema", "sinkhorn"] = "ema", sinkhorn_iters: int = 3):
        super().__init__()
        self.centering = centering
        self.sinkhorn_iters = sinkhorn_iters
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.n_teacher_views = n_teacher_views
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """``softmax((t - c) / tau_t)`` (or the Sinkhorn-Knopp plan), shape ``[T*B, K]``, float32, no gradient."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_out, teacher_temp, self.sinkhorn_iters)
        return F.softmax((teacher_out.detach().float() - self.center) / teacher_temp, dim=-1)

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float,
                *, update_center: bool = True) -> torch.Tensor:
        loss = self.cross_entropy(student_out, self.teacher_probs(teacher_out, teacher_temp))
        if update_center:
            self.update_center(teacher_out)
        return loss

    def cross_entropy(self, student_out: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """The loss for teacher targets already computed by :meth:`teacher_probs` (the trainer computes them
        once per step, for this and for its diagnostics)."""
        n_t = self.n_teacher_views
        batch = teacher_probs.shape[0] // n_t
        n_s = student_out.shape[0] // batch
        if batch * n_t != teacher_probs.shape[0] or batch * n_s != student_out.shape[0]:
            raise ValueError(f"DINOLoss: teacher rows {teacher_probs.shape[0]} and student rows "
                             f"{student_out.shape[0]} are not multiples of one batch size")
        q = teacher_probs.view(n_t, batch, -1)  # [T, B, K]
        log_p = F.log_softmax(student_out.float() / self.student_temp, dim=-1).view(n_s, batch, -1)  # [V, B, K]
        # cross[i, v] = mean_b -sum_k q[i,b,k] log_p[v,b,k]
        cross = -torch.einsum("tbk,vbk->tv", q, log_p) / batch
        # skip same-view pairs with a fixed-shape mask and a Python count (no host sync)
        same = torch.eye(n_t, n_s, dtype=torch.bool, device=cross.device)
        return cross.masked_fill(same, 0.0).sum() / (n_t * n_s - min(n_t, n_s))

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean(teacher_out)``, the mean taken over all rows of all ranks (every rank
        contributes the same number of rows; the count is a Python number, so no host sync)."""
        total = teacher_out.detach().float().sum(dim=0, keepdim=True)
        count = teacher_out.shape[0]  # rows per rank: the same on every rank (whole batches)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total)
            count *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(total / float(count), alpha=1 - self.center_momentum)
