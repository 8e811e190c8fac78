"""Training checkpoints: one ``.pt`` file per save, written atomically, the last K kept.

Layout inside a run directory::

    RUN_DIR/.dino-pipe-run               marks the folder as a run (written first; --out
                                         refuses any other non-empty folder)
    RUN_DIR/config.yaml                  the resolved config of the run
    RUN_DIR/metrics.jsonl                one JSON line per logged step
    RUN_DIR/summary.json                 the result of a finished run
    RUN_DIR/checkpoints/step-00001234.pt

A checkpoint is a plain dict loadable with ``torch.load(weights_only=True)``::

    {"format": "dino-pipe-checkpoint", "version": 1,
     "config": cfg.to_dict(), "step": int, "epoch": int, "world_size": int,
     "student": {"backbone.<timm key>": Tensor, ..., "head.<key>": Tensor},
     "teacher": {... same keys ...},
     "optimizer": ..., "scaler": ..., "center": Tensor [1, out_dim],
     "rng": {...}, "rng_ranks": [...], "data": {...}, "data_ranks": [...]}

A file is renamed into place only after it is fully written and fsynced, so a run killed at any
moment leaves either the previous checkpoints or the new one, never a torn file.
"""

from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dino_pipe.atomic import atomic_open
from dino_pipe.errors import UserError

CHECKPOINT_FORMAT = "dino-pipe-checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8,})\.pt$")
RUN_MARKER = ".dino-pipe-run"


def is_run_dir(run_dir: str | Path) -> bool:
    """A folder written by ``dino-pipe train``: its marker, or (runs made before the marker) checkpoints."""
    return (Path(run_dir) / RUN_MARKER).is_file() or bool(list_checkpoints(run_dir))


def mark_run_dir(run_dir: str | Path) -> None:
    from dino_pipe.atomic import atomic_write_json

    if not (Path(run_dir) / RUN_MARKER).is_file():
        atomic_write_json(Path(run_dir) / RUN_MARKER, {"format": "dino-pipe-run", "version": 1})


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files, oldest first (by step number)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: str | Path, state: dict, keep: int = 3) -> Path:
    """Write ``state`` (which must hold ``step``) atomically; delete all but the newest ``keep``."""
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    path = checkpoint_path(run_dir, int(state["step"]))
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_open(path, "wb") as f:
        f.write(buf.getbuffer())
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file -> itself; a run directory -> its newest checkpoint; else UserError."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = list_checkpoints(p)
        if not found and p.name == "checkpoints":  # RUN_DIR/checkpoints given instead of RUN_DIR
            found = list_checkpoints(p.parent)
        if found:
            return found[-1]
        raise UserError(f"{p}: no checkpoints found (expected {checkpoint_dir(p)}/step-XXXXXXXX.pt)")
    raise UserError(f"{p}: no such checkpoint file or run directory")


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint (file or run dir) on the CPU with ``weights_only=True``; damaged -> UserError."""
    p = find_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torn/garbage file, or a pickle that is not plain data
        if isinstance(e, PermissionError):
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{p}: damaged or unreadable checkpoint ({reason[:200]}); {previous_hint(p)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{p}: not a dino-pipe checkpoint (missing format '{CHECKPOINT_FORMAT}')")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{p}: checkpoint version {ckpt.get('version')} is not supported (expected {CHECKPOINT_VERSION})")
    for key in ("config", "step", "student", "teacher"):
        if key not in ckpt:
            raise UserError(f"{p}: damaged checkpoint (no '{key}' entry)")
    return ckpt


def previous_hint(path: str | Path) -> str:
    """What to do about a bad checkpoint file: move it aside so the previous one (named) is used."""
    p = Path(path)
    older = [c for c in list_checkpoints(p.parent.parent) if c.name < p.name] if p.parent.name == "checkpoints" else []
    if older:
        return f"move it aside (e.g. rename it to {p.name}.bad) to use the previous checkpoint {older[-1]}"
    return "no earlier checkpoint in this run: restart the run in a new --out"


# -- random number generator states, stored as tensors/ints so weights_only loading works -------


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The process's torch / CUDA / numpy / python RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64)},
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), None))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
