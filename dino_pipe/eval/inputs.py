"""What an evaluation reads: a checkpoint's config (plus dotted overrides) and labelled shard sets; and the
names of the files it will write (so that existing ones are refused before any work).

Checked in the calling process, before any worker starts, so a wrong path or an unlabelled set is
one :class:`~dino_pipe.errors.UserError` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from dino_pipe.config import Config, check_choice, choices, config_from_dict
from dino_pipe.errors import UserError


def resolve_config(base: dict | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's config (a checkpoint's ``config`` dict, or the defaults) with dotted overrides."""
    return config_from_dict(base or {}, overrides)


Which = Literal["teacher", "student"]
WHICH: tuple[str, ...] = choices(Which)


def read_weights(checkpoint: str | Path, which: str = "teacher") -> tuple[Path, dict]:
    """Check ``--which``, then read a checkpoint (file, or a run directory's newest) through the
    trainer's reader: (its path, its contents)."""
    from dino_pipe.runs.checkpoint_file import read_checkpoint

    check_choice(which, Which, "--which")
    return read_checkpoint(checkpoint)


def describe_weights(checkpoint: str, ckpt: dict, which: str, random_init: bool, model: str) -> dict:
    """The description of the weights that result files carry (``"checkpoint"`` / ``"source"``)."""
    cfg = ckpt["config"].get("model", {})
    return {"checkpoint": checkpoint, "which": which, "random_init": bool(random_init),
            "step": int(ckpt.get("step", 0)), "epoch": int(ckpt.get("epoch", 0)),
            "arch": cfg.get("arch"), "arch_kwargs": dict(cfg.get("arch_kwargs", {})), "model": model}


def checkpoint_facts(checkpoint: str | Path, which: str = "teacher", random_init: bool = False) -> tuple[dict, dict]:
    """(the config dict stored in a checkpoint, a description of the weights for result files)."""
    path, ck = read_weights(checkpoint, which)
    return ck["config"], describe_weights(str(Path(path).resolve()), ck, which, random_init, built_model(ck["config"]))


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
    """Facts of a labelled shard set (path, num_samples, num_classes, classes); unlabelled -> UserError.

    Reads the manifest only: the content check (sha256, labels) is done by the loaders that read the
    shards, each process on its share, so a job hashes every shard once."""
    from dino_pipe.data.shardset import open_shardset, read_manifest

    s = open_shardset(path, check=False)
    if not s.labeled or not s.classes:
        raise UserError(f"shard set {path}: unlabeled (manifest has no classes); k-NN and linear probes need labels")
    facts = {
        "path": str(Path(path).resolve()),
        "num_samples": s.num_samples,
        "num_classes": s.num_classes,
        "classes": list(s.classes),
    }
    names = read_manifest(Path(path)).get("class_names")  # human names beside the wnids (ImageNet), when known
    if isinstance(names, list) and len(names) == len(s.classes):
        facts["class_names"] = [str(n) for n in names]
    return facts


def attention_outputs(images: list[str | Path], out: str | Path) -> list[Path]:
    """The files :func:`render_attention` writes into ``out``: ``<image stem>-attention.png`` each, then
    ``attention.json``; two images of one stem (which would overwrite each other's PNG) -> UserError."""
    pngs: dict[Path, str] = {}
    for image in images:
        png = Path(out) / f"{Path(image).stem}-attention.png"
        if png in pngs:
            raise UserError(f"{pngs[png]} and {image} would both be drawn to {png}; rename one of them")
        pngs[png] = str(image)
    return [*pngs, Path(out) / "attention.json"]
