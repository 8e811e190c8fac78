"""Per-iteration schedules of the DINO recipe (learning rate, weight decay, teacher momentum, teacher
temperature), as plain float64 numpy arrays indexed by the global step.

``cosine_schedule(base, final, epochs, steps_per_epoch, warmup_epochs, warmup_start)``::

    value[i] = warmup_start + (base - warmup_start) * i / W                 for i < W  (W = warmup steps;
                                                                               linspace incl. both ends)
    value[W + j] = final + (base - final) / 2 * (1 + cos(pi * j / J))       for j < J  (J = total - W)

``teacher_temp_schedule``: per epoch, linear from ``warmup_temp`` to ``temp`` over the first
``warmup_epochs`` epochs (linspace including both ends), then constant ``temp``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dino_pipe.config import Config


def cosine_schedule(base: float, final: float, epochs: int, steps_per_epoch: int, *,
                    warmup_epochs: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    total = epochs * steps_per_epoch
    warmup_steps = min(warmup_epochs * steps_per_epoch, total)
    warm = np.linspace(warmup_start, base, warmup_steps) if warmup_steps > 0 else np.array([])
    j = np.arange(total - warmup_steps)
    n = max(len(j), 1)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * j / n))
    out = np.concatenate([warm, cos]).astype(np.float64)
    assert len(out) == total
    return out


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    warmup_epochs = min(warmup_epochs, epochs)
    warm = np.linspace(warmup_temp, temp, warmup_epochs) if warmup_epochs > 0 else np.array([])
    return np.concatenate([warm, np.full(epochs - warmup_epochs, temp)]).astype(np.float64)


@dataclass
class Schedules:
    """All schedules of one run; ``lr``, ``wd`` and ``momentum`` per step, ``teacher_temp`` per epoch."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    steps_per_epoch: int

    @classmethod
    def from_config(cls, cfg: Config, steps_per_epoch: int, global_batch: int) -> "Schedules":
        o, epochs = cfg.optim, cfg.train.epochs
        peak_lr = o.base_lr * global_batch / 256.0  # linear scaling rule
        return cls(
            lr=cosine_schedule(peak_lr, o.min_lr, epochs, steps_per_epoch, warmup_epochs=o.warmup_epochs),
            wd=cosine_schedule(o.weight_decay, o.weight_decay_end, epochs, steps_per_epoch),
            momentum=cosine_schedule(o.momentum_teacher, 1.0, epochs, steps_per_epoch),
            teacher_temp=teacher_temp_schedule(cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp,
                                               cfg.loss.warmup_teacher_temp_epochs, epochs),
            steps_per_epoch=steps_per_epoch,
        )

    def at(self, step: int) -> dict[str, float]:
        epoch = min(step // self.steps_per_epoch, len(self.teacher_temp) - 1)
        return {"lr": float(self.lr[step]), "wd": float(self.wd[step]), "momentum": float(self.momentum[step]),
                "teacher_temp": float(self.teacher_temp[epoch])}
