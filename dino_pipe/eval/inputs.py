"""What an evaluation reads: a checkpoint's config (plus dotted overrides) and labelled shard sets.

Checked in the calling process, before any worker starts, so a wrong path or an unlabelled set is
one :class:`~dino_pipe.errors.UserError` line.
"""

from __future__ import annotations

from pathlib import Path

from dino_pipe.config import Config, config_from_dict
from dino_pipe.errors import UserError


def resolve_config(base: dict | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's config (a checkpoint's ``config`` dict, or the defaults) with dotted overrides."""
    return config_from_dict(base or {}, overrides)


def checkpoint_facts(checkpoint: str | Path, which: str = "teacher", random_init: bool = False) -> tuple[dict, dict]:
    """(the config dict stored in a checkpoint, a description of the weights for result files)."""
    from dino_pipe.eval.trained_backbone import WHICH
    from dino_pipe.train.checkpoint import find_checkpoint, load_checkpoint

    if which not in WHICH:
        raise UserError(f"--which must be one of {', '.join(WHICH)}, got '{which}'")
    path = find_checkpoint(checkpoint)
    ck = load_checkpoint(path)
    model = ck["config"].get("model", {})
    source = {"checkpoint": str(Path(path).resolve()), "which": which, "random_init": bool(random_init),
              "step": int(ck.get("step", 0)), "epoch": int(ck.get("epoch", 0)),
              "arch": model.get("arch"), "arch_kwargs": model.get("arch_kwargs", {}),
              "model": built_model(ck["config"])}
    return ck["config"], source


def built_model(config: dict) -> str:
    """The backbone a run's config builds, described from the built model (on the meta device: no memory)."""
    import torch

    from dino_pipe.models.backbone import create_backbone, describe

    cfg = config_from_dict(config)
    try:
        with torch.device("meta"):
            model = create_backbone(cfg.model)
    except Exception:  # an architecture that cannot be built on the meta device: its name and arguments
        given = " ".join(f"{k}={v}" for k, v in cfg.model.arch_kwargs.items())
        return f"timm {cfg.model.arch}{', ' + given if given else ''}"
    return describe(model, cfg.model.arch, cfg.model.arch_kwargs)


def labelled_shardset(path: str | Path) -> dict:
    """Facts of a labelled shard set (path, num_samples, num_classes, classes); unlabelled -> UserError."""
    from dino_pipe.data.shardset import open_shardset

    s = open_shardset(path)
    if not s.labeled or not s.classes:
        raise UserError(f"shard set {path}: unlabeled (manifest has no classes); k-NN and linear probes need labels")
    return {"path": str(Path(path).resolve()), "num_samples": s.num_samples, "num_classes": s.num_classes, "classes": list(s.classes)}
