"""Collapse diagnostics for the teacher's output distribution.

DINO can collapse two ways (paper Sec. 5.3): to a **uniform** output (entropy ``H(P_t) -> ln K``;
too much centering) or to **one dimension** dominating for every image (``H(P_t) -> 0`` and
every image's argmax is the same prototype; too much sharpening). We track, over a window of steps:

* ``teacher_entropy``: mean over images of ``H(P_t) = -sum_k P_t[k] ln P_t[k]`` (0 .. ln K),
* ``teacher_entropy_max = ln K``,
* ``marginal_entropy``: ``H(mean_b P_t[b])``, the entropy of the batch-average distribution,
* ``prototypes_used``: how many distinct argmax prototypes the window's images picked.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


class CollapseMonitor:
    """Accumulates teacher probabilities' statistics; ``summary()`` returns and resets the window."""

    def __init__(self, out_dim: int, *, uniform_ratio: float = 0.98, onehot_ratio: float = 0.02):
        self.out_dim = out_dim
        self.uniform_ratio = uniform_ratio
        self.onehot_ratio = onehot_ratio
        self._reset()

    def _reset(self) -> None:
        self._entropy_sum = 0.0
        self._count = 0
        self._mean_p: torch.Tensor | None = None
        self._batches = 0
        self._argmax_hist: torch.Tensor | None = None

    @torch.no_grad()
    def observe(self, teacher_probs: torch.Tensor) -> None:
        """``teacher_probs [N, K]``: centered, sharpened teacher softmax of one step (float32).
        Queues device work only (no host sync); :meth:`summary` reads the window on the host."""
        p = teacher_probs.detach().float()
        ent = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)
        winners = p.argmax(dim=-1)  # a fixed-size histogram: bincount(minlength) would wait for the device
        hist = torch.zeros(self.out_dim, dtype=torch.int64, device=p.device).index_add_(
            0, winners, torch.ones_like(winners)
        )
        mean_p = p.mean(dim=0)
        ent_sum = ent.sum()  # kept as a tensor: observing every step costs no host sync
        self._entropy_sum = ent_sum if self._count == 0 else self._entropy_sum + ent_sum
        self._count += p.shape[0]
        self._mean_p = mean_p if self._mean_p is None else self._mean_p + mean_p
        self._argmax_hist = hist if self._argmax_hist is None else self._argmax_hist + hist
        self._batches += 1

    def summary(self) -> dict[str, float]:
        if not self._count:
            return {}
        mean_p = (self._mean_p / self._batches).clamp_min(1e-30)
        out = {
            "teacher_entropy": float(self._entropy_sum) / self._count,
            "teacher_entropy_max": math.log(self.out_dim),
            "marginal_entropy": float(-(mean_p * mean_p.log()).sum()),
            "prototypes_used": int((self._argmax_hist > 0).sum()),
        }
        self._reset()
        return out

    def warning(self, stats: dict[str, float]) -> str | None:
        """A one-line warning when the teacher looks collapsed, else None."""
        if not stats:
            return None
        ln_k = stats["teacher_entropy_max"]
        if stats["teacher_entropy"] >= self.uniform_ratio * ln_k:
            return (f"teacher output is near uniform (entropy {stats['teacher_entropy']:.3f} of max {ln_k:.3f}): "
                    "collapse to uniform? (lower the teacher temperature / center momentum)")
        if stats["marginal_entropy"] <= self.onehot_ratio * ln_k or stats["prototypes_used"] <= 1:
            return (f"teacher output is near one-hot on the same prototype for all images (marginal entropy "
                    f"{stats['marginal_entropy']:.3f}, {stats['prototypes_used']} prototype(s) used): collapse?")
        return None


class PartialCollapseWatch:
    """Partial collapse: the teacher puts its mass on a few prototypes for a sustained stretch.

    Neither warning above fires then (marginal entropy is well above 0, more than one prototype is
    used), yet every image's target is near one-hot on one of a handful of prototypes, and the
    features can end worse than at initialization. A check window of ``n`` teacher outputs counts as
    *concentrated* when at most ``min(few, K // 4, n // 4)`` prototypes took the argmax (so each one
    used takes 4 images or more on average) and the mean per-image entropy is at most ``sharp`` x ln K;
    :meth:`update` returns a one-line warning once ``sustain`` windows in a row were concentrated
    (and then every ``sustain`` windows while it lasts), else None.
    """

    def __init__(self, out_dim: int, *, few: int = 32, sharp: float = 0.25, sustain: int = 5):
        self.out_dim, self.sharp, self.sustain = out_dim, sharp, sustain
        self.few = max(1, min(few, out_dim // 4))
        self.run = 0  # consecutive concentrated windows
        self.since_step: int | None = None

    def concentrated(self, stats: dict, window_images: int | None = None) -> bool:
        few = self.few if window_images is None else min(self.few, window_images // 4)
        return (bool(stats) and stats["prototypes_used"] <= few
                and stats["teacher_entropy"] <= self.sharp * stats["teacher_entropy_max"])

    def update(self, stats: dict, step: int, window_images: int | None = None) -> str | None:
        """``window_images``: teacher outputs behind ``stats`` (too few images make any count look small)."""
        if not self.concentrated(stats, window_images):
            self.run, self.since_step = 0, None
            return None
        self.run += 1
        if self.since_step is None:
            self.since_step = step
        if self.run % self.sustain:
            return None
        ln_k = stats["teacher_entropy_max"]
        return (f"partial collapse: since step {self.since_step} the teacher puts its mass on "
                f"{stats['prototypes_used']} of {self.out_dim} prototypes (≈{math.exp(stats['marginal_entropy']):.0f} "
                f"effective; per-image entropy {stats['teacher_entropy']:.2f} of ln K = {ln_k:.2f}); "
                "try a softer teacher (a higher loss.teacher_temp), a larger optim.momentum_teacher, "
                "a smaller model.out_dim, or a lower optim.base_lr")


class CollapseCheck:
    """A run's collapse checks: every step's teacher output is observed, and :meth:`check` (every
    train.collapse_check_every_steps) returns the window's statistics with ``collapse_warning`` and
    ``partial_collapse_warning`` for the next record. A warning is handed to ``warn(step, text)``: a
    uniform/one-hot one once per episode (not at every check), a partial-collapse one as
    :class:`PartialCollapseWatch` decides."""

    def __init__(self, out_dim: int, warn: Callable[[int, str], None]):
        self.monitor = CollapseMonitor(out_dim)
        self.partial = PartialCollapseWatch(out_dim)
        self.warn = warn
        self.window_outputs = 0  # teacher outputs observed since the last check
        self.last_kind: str | None = None

    def observe(self, teacher_probs: torch.Tensor) -> None:
        self.monitor.observe(teacher_probs)
        self.window_outputs += teacher_probs.shape[0]

    def check(self, step: int) -> dict:
        """The window's statistics and warnings (empty when nothing was observed); starts a new window."""
        window_outputs, self.window_outputs = self.window_outputs, 0
        stats = self.monitor.summary()
        warning = self.monitor.warning(stats)
        kind = warning.split(" (")[0] if warning else None
        if warning and kind != self.last_kind:  # once per episode, not every check
            self.warn(step, warning)
        self.last_kind = kind
        if not stats:
            return {}
        partial_warning = self.partial.update(stats, step, window_outputs)
        if partial_warning:
            self.warn(step, partial_warning)
        return {**stats, "collapse_warning": warning, "partial_collapse_warning": partial_warning}
