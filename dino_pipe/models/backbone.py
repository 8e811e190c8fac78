"""Backbones through timm: the feature extractor under the DINO head.

The backbone's output is one embedding per image: the final-norm CLS token for ViTs
(``global_pool="token"``), globally pooled features for ResNets. ViTs are built with
``dynamic_img_size=True`` so 96-px local crops (or any size divisible by the patch) go through
the same weights; their position table is resized as the reference DINO does unless
``model.pos_interp=timm`` (see :mod:`dino_pipe.models.pos_embed`).
"""

from __future__ import annotations

import timm
import torch.nn as nn

from dino_pipe.config import ModelConfig
from dino_pipe.errors import UserError
from dino_pipe.models.pos_embed import use_reference_resampling


def is_vit(arch: str) -> bool:
    return arch.startswith(("vit_", "deit", "eva"))


def create_backbone(cfg: ModelConfig, *, drop_path: float = 0.0) -> nn.Module:
    """A timm model with no classifier (``num_classes=0``) and random weights.

    ``drop_path`` is the stochastic-depth rate (the student uses ``cfg.drop_path``, the teacher 0).
    The module gets an ``embed_dim`` attribute: the size of one embedding.
    """
    kwargs = dict(cfg.arch_kwargs)
    if is_vit(cfg.arch):
        kwargs.setdefault("dynamic_img_size", True)
        kwargs.setdefault("global_pool", "token")
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        model = timm.create_model(cfg.arch, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise UserError(f"config key model.arch: {e} (any timm architecture name works)") from None
    except TypeError as e:
        raise UserError(f"config key model.arch_kwargs: {cfg.arch} does not accept them ({e})") from None
    model.embed_dim = model.num_features
    if cfg.pos_interp == "reference":
        use_reference_resampling(model)
    return model


def patch_size(model: nn.Module) -> int | None:
    """The ViT patch size (None for CNNs)."""
    pe = getattr(model, "patch_embed", None)
    if pe is None:
        return None
    ps = pe.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def describe(model: nn.Module, arch: str, arch_kwargs: dict | None = None) -> str:
    """The backbone as built, for titles: the timm name alone can mislead once ``arch_kwargs``
    change it (``vit_tiny_patch16_224`` with ``patch_size=8`` has 8-px patches).

    e.g. ``ViT patch 8, 4 blocks, 192-d (timm vit_tiny_patch16_224, patch_size=8 depth=4 img_size=32)``.
    """
    given = " ".join(f"{k}={v}" for k, v in (arch_kwargs or {}).items())
    name = f"timm {arch}, {given}" if given else f"timm {arch}"
    p = patch_size(model)
    if p is None:
        return f"{type(model).__name__} {model.num_features}-d ({name})"
    blocks = getattr(model, "blocks", None)
    depth = f"{len(blocks)} blocks, " if blocks is not None else ""
    return f"ViT patch {p}, {depth}{model.num_features}-d ({name})"
