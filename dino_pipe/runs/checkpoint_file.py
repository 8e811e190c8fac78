"""A checkpoint file: its format, written atomically, read back with ``weights_only=True`` (what training and
evaluation both need, so it sits below both).

Layout inside a run directory (names: :mod:`dino_pipe.runs.run_dir`)::

    RUN_DIR/.dino-pipe-run               marks the folder as a run (written first; --out
                                         refuses any other non-empty folder)
    RUN_DIR/config.yaml                  the resolved config of the run
    RUN_DIR/data.json                    the shard set it trains on ({"train": absolute path or synthetic:N})
    RUN_DIR/metrics.jsonl                one JSON line per logged step
    RUN_DIR/summary.json                 the result of a finished run
    RUN_DIR/checkpoints/step-00001234.pt

A checkpoint is a plain dict loadable with ``torch.load(weights_only=True)``::

    {"format": "dino-pipe-checkpoint", "version": 1,
     "config": cfg.to_dict(), "step": int, "epoch": int, "world_size": int,
     "student": {"backbone.<timm key>": Tensor, ..., "head.<key>": Tensor},
     "teacher": {... same keys ...},
     "optimizer": ..., "scaler": ..., "objective": {"dino.center": Tensor [1, out_dim]},
     "rng": {...}, "rng_ranks": [...], "data": {...}, "data_ranks": [...],
     "data_identity": str, "data_path": str}   (what the shard set holds, by content; where it was)

A file is renamed into place only after it is fully written and fsynced, so a run killed at any
moment leaves either the previous checkpoints or the new one, never a torn file.

:func:`save_checkpoint` / :func:`load_checkpoint` are training's side (through
:class:`dino_pipe.train.checkpoint.CheckpointManager`); :func:`read_checkpoint` the reading side that
evaluation uses (through :mod:`dino_pipe.eval.inputs`). torch is imported by the functions that need it.
"""

from __future__ import annotations

import io
from pathlib import Path

from dino_pipe.atomic import atomic_open
from dino_pipe.errors import UserError
from dino_pipe.runs.run_dir import checkpoint_path, find_checkpoint, is_checkpoint_name, list_checkpoints

CHECKPOINT_FORMAT = "dino-pipe-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(run_dir: str | Path, state: dict, keep: int = 3) -> Path:
    """Write ``state`` (which must hold ``step``) atomically; delete all but the newest ``keep``."""
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    import torch

    path = checkpoint_path(run_dir, int(state["step"]))
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_open(path, "wb") as f:
        f.write(buf.getbuffer())
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """The reader evaluation uses: a checkpoint file, or a run directory's newest -> (its path, its contents)."""
    found = find_checkpoint(path)
    return found, load_checkpoint(found, resuming=False)


def _torch_file(p: Path) -> bool:
    """The file starts like what ``torch.save`` writes (a zip archive, or a legacy pickle)."""
    with open(p, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


RENAMED_KEYS = {"center": ("objective", "dino.center")}
"""Top-level keys of older checkpoints -> (section, key) in today's layout (the centre moved into the objective's
state). Checkpoints written before the objective owned its state still resume through :func:`upgrade_layout`."""


def upgrade_layout(ckpt: dict) -> dict:
    """``ckpt`` with the keys of older layouts moved to today's (:data:`RENAMED_KEYS`), in place."""
    for old, (section, key) in RENAMED_KEYS.items():
        if old in ckpt:
            ckpt.setdefault(section, {}).setdefault(key, ckpt.pop(old))
    return ckpt


def load_checkpoint(path: str | Path, resuming: bool = True) -> dict:
    """Load a checkpoint (file or run dir) on the CPU with ``weights_only=True``; damaged -> UserError.

    ``resuming``: the hint for a damaged file is about resuming the run (else about choosing another file)."""
    p = find_checkpoint(path)
    in_run = p.parent.name == "checkpoints" and is_checkpoint_name(p.name)
    if not in_run and not _torch_file(p):
        raise UserError(f"{p}: not a checkpoint (not a file `dino-pipe train` writes); give a checkpoint "
                        "RUN_DIR/checkpoints/step-XXXXXXXX.pt or a run folder RUN_DIR")
    import torch

    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torn/garbage file, or a pickle that is not plain data
        if isinstance(e, PermissionError):
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only load failed" in reason.lower():  # torch's advice to unpickle untrusted code: not ours
            reason = "it holds Python objects, not only tensors and plain values"
        raise UserError(f"{p}: damaged or unreadable checkpoint ({reason[:200]}); {previous_hint(p, resuming)}") \
            from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{p}: not a dino-pipe checkpoint (missing format '{CHECKPOINT_FORMAT}')")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise UserError(
            f"{p}: checkpoint version {ckpt.get('version')} is not supported (expected {CHECKPOINT_VERSION})"
        )
    for key in ("config", "step", "student", "teacher"):
        if key not in ckpt:
            raise UserError(f"{p}: damaged checkpoint (no '{key}' entry)")
    return upgrade_layout(ckpt)


def previous_hint(path: str | Path, resuming: bool = True) -> str:
    """What to do about a bad checkpoint file: resuming, move it aside so the previous one (named) is used;
    reading (evaluation, export), give the previous one."""
    p = Path(path)
    older = [c for c in list_checkpoints(p.parent.parent) if c.name < p.name] if p.parent.name == "checkpoints" else []
    if not resuming:
        return f"give another checkpoint, e.g. the previous one {older[-1]}" if older else "give another checkpoint"
    if older:
        return f"move it aside (e.g. rename it to {p.name}.bad) to use the previous checkpoint {older[-1]}"
    return "no earlier checkpoint in this run: restart the run in a new --out"
