"""A synthetic stand-in for :class:`dino_pipe.data.loader.ViewLoader`: random views, no files.

Same interface as the real loader (``len`` = steps per epoch per rank, iterating again = the next
epoch, ``state_dict``/``load_state_dict`` resume on exactly the next batch), so the trainer can be
tested without shards and ``bench train`` can measure the step with zero data cost.

Batch ``(epoch, step)`` on ``rank`` is a pure function of ``(seed, rank, epoch, step)``: views are
normal noise ``[B, 3, S, S]`` from a generator seeded with those four numbers, so two ranks never
see the same tensors and a resumed run sees the same batches as an uninterrupted one. With
``fixed=True`` one batch is made once (on the device) and yielded every step (for benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dino_pipe.config import DataConfig
from dino_pipe.data.recipe import multicrop_recipe
from dino_pipe.device import check_device, torch_device


@dataclass
class SyntheticBatch:
    """``views``: the recipe's globals ``[B, 3, G, G]`` then ``n_local`` locals ``[B, 3, L, L]``; ``labels [B]``."""

    views: list[torch.Tensor]
    labels: torch.Tensor
    keys: list[str] = field(default_factory=list)


class SyntheticViewLoader:
    def __init__(self, cfg: DataConfig, *, num_samples: int = 1024, num_classes: int = 10, device: str = "cpu",
                 device_id: int = 0, rank: int = 0, world_size: int = 1, seed: int | None = None,
                 batch_size: int | None = None, fixed: bool = False):
        self.cfg = cfg
        self.batch_size = int(batch_size or cfg.batch_size)
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.device = torch_device(check_device(device), device_id)
        self.rank, self.world_size = rank, world_size
        self.seed = cfg.seed if seed is None else seed
        self.fixed = fixed
        self.dtype = getattr(torch, cfg.output_dtype) if self.device.type == "cuda" else torch.float32
        self._epoch, self._step = 0, 0
        self._fixed_batch: SyntheticBatch | None = None

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def _make(self, epoch: int, step: int) -> SyntheticBatch:
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.rank) * 1_000_003 + epoch) * 1_000_003 + step)
        sizes = [spec.size for spec in multicrop_recipe(self.cfg)]  # the recipe's views, globals first
        b = self.batch_size
        views = [torch.randn(b, 3, s, s, generator=g).to(self.device, self.dtype, non_blocking=True) for s in sizes]
        labels = torch.randint(0, self.num_classes, (b,), generator=g).to(self.device)
        return SyntheticBatch(views, labels)

    def __iter__(self):
        n = len(self)
        while self._step < n:
            step = self._step
            if self.fixed:
                if self._fixed_batch is None:
                    self._fixed_batch = self._make(0, 0)
                batch = self._fixed_batch
            else:
                batch = self._make(self._epoch, step)
            self._step = step + 1
            yield batch
        self._epoch, self._step = self._epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "step": self._step}

    def load_state_dict(self, state: dict) -> None:
        self._epoch, self._step = int(state["epoch"]), int(state["step"])
