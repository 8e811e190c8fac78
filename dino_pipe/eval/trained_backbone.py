"""The backbone a training run produced: its teacher (or student) weights in a fresh timm model.

A dino-pipe checkpoint stores ``student`` and ``teacher`` state dicts whose keys are
``backbone.<timm key>`` and ``head.<key>``, plus the run's ``config``. :func:`load_backbone`
rebuilds the architecture from that config (``create_backbone(cfg.model)``, no drop-path) and
loads the ``backbone.`` entries strictly; ``random_init=True`` keeps the architecture and skips
the weights (the untrained baseline the demo compares against).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dino_pipe.config import Config, ModelConfig, config_from_dict
from dino_pipe.errors import UserError
from dino_pipe.eval.inputs import describe_weights, read_weights
from dino_pipe.models.backbone import create_backbone, describe

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadedBackbone:
    """A backbone in eval mode, the run's config, and where the weights came from."""

    model: nn.Module
    config: Config
    source: dict[str, Any] = field(default_factory=dict)


def backbone_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"backbone.<k>": v, "head.<k>": w}`` -> ``{"<k>": v}`` (DDP / compile prefixes dropped)."""
    out = {}
    for key, value in state.items():
        for p in _WRAPPER_PREFIXES:
            while key.startswith(p):
                key = key[len(p):]
        if key.startswith("backbone."):
            out[key[len("backbone."):]] = value
    return out


def load_backbone(
    checkpoint: str | Path,
    which: str = "teacher",
    *,
    random_init: bool = False,
    seed: int = 0,
    random_model: ModelConfig | None = None,
) -> LoadedBackbone:
    """Build the run's backbone and load its ``which`` weights (or keep a seeded random init).

    ``random_model``: with ``random_init``, build this model section instead of the checkpoint's (so
    command-line overrides such as ``"model.arch_kwargs={zero_init_last: false}"`` shape the baseline).

    Raises :class:`UserError` for a missing/damaged checkpoint or weights that do not fit.
    """
    path, ckpt = read_weights(checkpoint, which)
    cfg = config_from_dict(ckpt["config"])
    torch.manual_seed(seed)
    model = create_backbone(random_model if (random_init and random_model is not None) else cfg.model)
    if not random_init:
        state = backbone_state_dict(ckpt[which])
        if not state:
            raise UserError(f"{path}: the '{which}' state dict has no 'backbone.' entries")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(
                f"{path}: the {which} weights do not fit {cfg.model.arch} "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); check model.arch/arch_kwargs"
            )
    model.eval().requires_grad_(False)
    source = describe_weights(
        str(path), ckpt, which, random_init, describe(model, cfg.model.arch, cfg.model.arch_kwargs)
    )
    return LoadedBackbone(model=model, config=cfg, source=source)
