"""A run folder's layout: its marker, its checkpoint files and their names (no torch needed).

::

    RUN_DIR/.dino-pipe-run               marks the folder as a run (written first; --out
                                         refuses any other non-empty folder)
    RUN_DIR/checkpoints/step-00001234.pt
    RUN_DIR/data.json                    the shard set the run trains on

:mod:`dino_pipe.runs.checkpoint_file` writes and reads the files; this module only names and lists
them, so the CLI can check ``--out`` before torch is imported.
"""

from __future__ import annotations

import re
from pathlib import Path

from dino_pipe.errors import UserError

_NAME = re.compile(r"^step-(\d{8,})\.pt$")
RUN_MARKER = ".dino-pipe-run"


def is_run_dir(run_dir: str | Path) -> bool:
    """A folder written by ``dino-pipe train``: its marker, or (runs made before the marker) checkpoints."""
    return (Path(run_dir) / RUN_MARKER).is_file() or bool(list_checkpoints(run_dir))


def mark_run_dir(run_dir: str | Path) -> None:
    """Write the run marker (once)."""
    from dino_pipe.atomic import atomic_write_json

    if not (Path(run_dir) / RUN_MARKER).is_file():
        atomic_write_json(Path(run_dir) / RUN_MARKER, {"format": "dino-pipe-run", "version": 1})


DATA_RECORD = "data.json"


def data_key(data: str | Path) -> str:
    """How a run notes its data: the shard set's absolute path, or ``synthetic[:N]`` / a streamed URL
    (``scheme://…``) as given."""
    text = str(data)
    return text if text.startswith("synthetic") or "://" in text else str(Path(data).resolve())


def record_data(run_dir: str | Path, data: str | Path) -> None:
    """Note in the run which shard set it trains on, so that evaluation can find it (and its val/ sibling)."""
    from dino_pipe.atomic import atomic_write_json

    atomic_write_json(Path(run_dir) / DATA_RECORD, {"train": data_key(data)})


def recorded_data(run_dir: str | Path) -> str | None:
    """The shard set a run trains on, as :func:`record_data` noted it (None for runs made before the note)."""
    import json

    try:
        return json.loads((Path(run_dir) / DATA_RECORD).read_text()).get("train")
    except (OSError, ValueError, AttributeError):
        return None


def is_checkpoint_name(name: str) -> bool:
    """``name`` is a checkpoint file's name as a run writes it (``step-XXXXXXXX.pt``)."""
    return bool(_NAME.match(name))


def checkpoint_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/checkpoints``."""
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """``RUN_DIR/checkpoints/step-XXXXXXXX.pt`` for ``step``."""
    return checkpoint_dir(run_dir) / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files, oldest first (by step number)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


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


# Config keys that may differ when a run is resumed (they do not change the computation; data.global_batch_size
# only sets data.batch_size, which is compared, resolved for the run's process count, which is compared too).
RESUMABLE_CHANGES = ("train.max_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
                     "train.log_every_steps", "train.collapse_check_every_steps", "train.compile",
                     "data.threads", "data.prefetch", "data.hw_decoder_load", "data.global_batch_size", "eval.")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not (prefix.endswith("arch_kwargs.") or k == "arch_kwargs"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ and that matter for the computation. A key the old config lacks (a
    setting added after that run was made) counts as its default, which is how the run was computed."""
    from dino_pipe.config import Config

    defaults = _flat(Config().to_dict())
    a, b = _flat(old), _flat(new)
    a.update({k: v for k, v in defaults.items() if k not in a})
    diffs = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k) and not any(k.startswith(p) for p in RESUMABLE_CHANGES):
            diffs.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return diffs
