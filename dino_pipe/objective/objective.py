"""The training objective as one module: the DINO term and the KoLeo regulariser, weighted from the config.

For one step, with ``G`` global views (the recipe's count) of ``B`` images::

    loss_dino  = DINOLoss(student_out, teacher_out, tau_t)              (EMA centre or Sinkhorn-Knopp)
    loss_koleo = sum_{g < G} KoLeo(student backbone embeddings of global view g)     (as DINOv2)
    loss       = loss_dino + loss.koleo_weight * loss_koleo

A term whose weight is 0 is not computed (and not returned). ``forward`` returns the named terms and the
total, ``{"loss": ..., "loss_dino": ..., "loss_koleo": ...}``; the trainer logs every ``loss_*`` term.
The objective's state (the DINO centre, ``dino.center``) is in its own ``state_dict``.

Adding a term (iBOT, say) is one module beside :mod:`~dino_pipe.objective.koleo` and a weight in
:class:`~dino_pipe.config.LossConfig`: compute it in :meth:`DINOObjective.forward` when its weight is above
0 and add ``weight * term`` to the total; it is then logged by name with no other change.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dino_pipe.config import LossConfig
from dino_pipe.objective.dino_loss import DINOLoss
from dino_pipe.objective.koleo import koleo_loss


class DINOObjective(nn.Module):
    """The DINO term (``self.dino``, which owns the centre) plus the weighted regularisers.

    Args:
        cfg: the ``loss`` section (temperatures, centering, ``koleo_weight``).
        out_dim: K, the head's output size.
        n_global: the number of global (teacher) views, from the recipe.
    """

    def __init__(self, cfg: LossConfig, out_dim: int, n_global: int):
        super().__init__()
        self.n_global = n_global
        self.dino = DINOLoss(out_dim, student_temp=cfg.student_temp, center_momentum=cfg.center_momentum,
                             n_teacher_views=n_global, centering=cfg.centering, sinkhorn_iters=cfg.sinkhorn_iters)
        self.koleo_weight = float(cfg.koleo_weight)

    @property
    def needs_embeddings(self) -> bool:
        """Whether :meth:`forward` needs the student's backbone embeddings (a KoLeo weight above 0)."""
        return self.koleo_weight > 0

    def teacher_probs(self, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """The DINO term's teacher targets ``[G*B, K]`` (computed once per step: the loss and the diagnostics
        read them)."""
        return self.dino.teacher_probs(teacher_out, teacher_temp)

    def forward(self, student_out: torch.Tensor, teacher_probs: torch.Tensor,
                student_embed: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``student_out [V*B, K]`` (view-major, globals first), ``teacher_probs`` from :meth:`teacher_probs`,
        ``student_embed [V*B, D]`` (when :attr:`needs_embeddings`) -> the named terms and their total."""
        terms = {"loss_dino": self.dino.cross_entropy(student_out, teacher_probs)}
        total = terms["loss_dino"]
        if self.koleo_weight > 0:  # per global view, this rank's images (as DINOv2)
            if student_embed is None:
                raise ValueError("DINOObjective: koleo_weight > 0 needs the student's backbone embeddings")
            globals_ = student_embed[: teacher_probs.shape[0]].chunk(self.n_global)
            terms["loss_koleo"] = sum(koleo_loss(e) for e in globals_)
            total = total + self.koleo_weight * terms["loss_koleo"]
        return {"loss": total, **terms}

    @torch.no_grad()
    def update(self, teacher_out: torch.Tensor) -> None:
        """The state's step, after the optimizer's: the DINO centre moves towards this step's teacher outputs."""
        self.dino.update_center(teacher_out)
