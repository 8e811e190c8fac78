"""The online k-NN during training, as a hook handed down by the caller.

Training imports nothing from :mod:`dino_pipe.eval`: whoever starts a run (the CLI) passes
``train(..., online_knn=factory)``, where ``factory(cfg, env)`` returns this rank's :class:`KnnProbe`
(or None when the config asks for none). :func:`dino_pipe.eval.online_knn.training_probe` is that factory.
:class:`OnlineKnnWatch` runs the probe at step 0 and when it is due, keeps step 0's value (the untrained
network) as the baseline, warns when the features get worse than it, and says what to record and show.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from dino_pipe.config import Config
from dino_pipe.distributed import DistEnv


class KnnProbe(Protocol):
    """Measures a backbone's k-NN accuracy on a fixed labelled pair of shard sets."""

    def due(self, step: int, steps_per_epoch: int, last_step: int) -> bool:
        """Measure after ``step`` steps?"""

    def measure(self, backbone: Any) -> dict:
        """``{"knn_top1", "knn_top5", "knn_k", "knn_seconds"}``; every rank calls it together."""

    def close(self) -> None: ...


KnnProbeFactory = Callable[[Config, DistEnv], Optional[KnnProbe]]
"""``factory(cfg, env)``: this rank's probe, or None when ``cfg`` configures no online k-NN (picklable:
spawned ranks call it)."""


class OnlineKnnWatch:
    """The teacher's online k-NN over a run: step 0's value is the baseline (measured on a fresh run, read
    back from metrics.jsonl's step-0 record on a resumed one), later values below it warn."""

    def __init__(self, probe: KnnProbe, teacher: Any, warn: Callable[[int, str], None],
                 step0: float | None = None):
        self.probe, self.teacher, self.warn = probe, teacher, warn
        self.step0 = step0
        self.last: dict | None = None

    def due(self, step: int, steps_per_epoch: int, last_step: int) -> bool:
        return self.probe.due(step, steps_per_epoch, last_step)

    def measure(self, step: int) -> dict:
        """Measure the teacher after ``step`` steps; the record for metrics.jsonl (``knn_*`` and ``knn_warning``,
        without ``step``/``epoch``/``time``). A value below step 0's is handed to ``warn``."""
        m = self.probe.measure(self.teacher)
        if step == 0:
            self.step0 = m["knn_top1"]
        warning = None
        if self.step0 is not None and step > 0 and m["knn_top1"] < self.step0:
            warning = (f"online k-NN top-1 {m['knn_top1']:.1f}% (k={m['knn_k']}) is below the untrained network's "
                       f"{self.step0:.1f}% at step 0: training is making the features worse (see the collapse numbers "
                       "in metrics.jsonl; a softer teacher, more teacher momentum or a lower lr may help)")
            self.warn(step, warning)
        self.last = {"step": step, "k": m["knn_k"], "top1": m["knn_top1"], "untrained_top1": self.step0}
        return {**m, "knn_warning": warning}

    def text(self, step: int) -> str:
        """The progress line's part: `` | k-NN 41.2% (step 0: 12.0%)``."""
        if self.last is None:
            return ""
        base = f" (step 0: {self.step0:.1f}%)" if self.step0 is not None and step > 0 else ""
        return f" | k-NN {self.last['top1']:.1f}%{base}"

    def close(self) -> None:
        self.probe.close()
