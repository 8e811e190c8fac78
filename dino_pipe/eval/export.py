"""Export a trained backbone as a plain timm state dict in safetensors, plus a JSON sidecar.

The file holds exactly the keys of ``timm.create_model(arch, num_classes=0, **arch_kwargs)``,
so timm loads it with no key surgery::

    model = timm.create_model(arch, pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file="backbone.safetensors"), **arch_kwargs)

``backbone.json`` beside it records ``arch``, ``arch_kwargs`` (those the run used, including the
ones dino-pipe adds for ViTs: ``dynamic_img_size``, ``global_pool``), the embedding size, the
source checkpoint and ``pretrained_cfg``: the normalisation mean/std the run trained with and its
input size, so that passing it as ``pretrained_cfg_overlay`` gives timm's data config
(``timm.data.resolve_data_config({}, model=model)``) the run's statistics, not ImageNet's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dino_pipe.atomic import atomic_open, atomic_write_json, check_output_file
from dino_pipe.errors import UserError
from dino_pipe.models.backbone import is_vit


def sidecar_path(out: str | Path) -> Path:
    return Path(out).with_suffix(".json")


def export_backbone(checkpoint: str | Path, out: str | Path, *, which: str = "teacher",
                    force: bool = False) -> dict[str, Any]:
    """Write the ``which`` backbone of ``checkpoint`` to ``out`` (.safetensors) and its sidecar JSON;
    either existing is refused unless ``force``."""
    import timm
    from safetensors.torch import save

    from dino_pipe.eval.trained_backbone import load_backbone

    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: the file name must end in .safetensors")
    check_output_file(out, "--out", force=force)
    check_output_file(sidecar_path(out), "--out", force=force, why=f"written beside {out.name}")
    loaded = load_backbone(checkpoint, which)  # checks that the weights fit the architecture
    model, cfg = loaded.model, loaded.config
    state = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    arch_kwargs = dict(cfg.model.arch_kwargs)
    if is_vit(cfg.model.arch):
        arch_kwargs.setdefault("dynamic_img_size", True)
        arch_kwargs.setdefault("global_pool", "token")
    meta = {"format": "dino-pipe-backbone", "arch": cfg.model.arch, "which": which, "step": str(loaded.source["step"])}
    with atomic_open(out, "wb") as f:  # a failed write (disk full) leaves no partial or temporary file
        f.write(save(state, metadata=meta))
    size = int(cfg.data.global_size)
    pretrained_cfg = {
        "file": str(out),
        "mean": [float(v) for v in cfg.data.mean],
        "std": [float(v) for v in cfg.data.std],
        "input_size": [3, size, size],
        "interpolation": "bicubic",
        "num_classes": 0,
    }
    info = {
        "file": str(out),
        "arch": cfg.model.arch,
        "arch_kwargs": arch_kwargs,
        "num_features": int(getattr(model, "num_features", 0)),
        "parameters": int(sum(v.numel() for v in state.values())),
        "source": loaded.source,
        "pretrained_cfg": pretrained_cfg,
        "timm_version": timm.__version__,
        "load": (f"timm.create_model({cfg.model.arch!r}, pretrained=True, num_classes=0, "
                 f"pretrained_cfg_overlay=pretrained_cfg, **arch_kwargs)  "
                 f"# arch_kwargs and pretrained_cfg (file, mean, std, input_size) from {sidecar_path(out)}"),
    }
    atomic_write_json(sidecar_path(out), info)
    return info


def load_exported(path: str | Path) -> torch.nn.Module:
    """The exported backbone through timm's own pretrained-file loading (what a user would do)."""
    import json

    import timm

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        raise UserError(f"{path}: exported backbone or its sidecar {side.name} not found")
    info = json.loads(side.read_text())
    overlay = {**info.get("pretrained_cfg", {}), "file": str(path)}
    model = timm.create_model(info["arch"], pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=overlay, **info["arch_kwargs"])
    return model.eval()
