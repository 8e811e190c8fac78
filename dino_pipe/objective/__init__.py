"""The training objective: :class:`DINOObjective` composes the DINO loss (centering and sharpening) and the
KoLeo regulariser by their config weights; the terms are their own modules."""

from dino_pipe.objective.dino_loss import DINOLoss
from dino_pipe.objective.objective import DINOObjective

__all__ = ["DINOLoss", "DINOObjective"]
