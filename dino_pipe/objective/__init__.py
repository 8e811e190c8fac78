"""Objectives: the DINO loss with centering and sharpening."""

from dino_pipe.objective.dino_loss import DINOLoss

__all__ = ["DINOLoss"]
