"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A reader (or a resumed run) therefore sees either the old complete file or the new complete file,
never a torn one, even after ``kill -9``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from dino_pipe.errors import UserError

_UMASK = os.umask(0)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success.

    ``fsync=False`` still protects against a killed process (the rename is atomic) but not against
    power loss; the caller then makes the file durable later (e.g. a batch of shards at once).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode of a new file
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not e.filename and e.errno:  # a failed write names no file: name it
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def check_output_file(path: str | os.PathLike, option: str, *, force: bool = False, why: str | None = None) -> None:
    """Before any work: ``path`` can become a file (it is not a folder, its parent is not a file), and it
    does not exist yet unless ``force`` (the ``--force`` of the command): no command replaces a file the
    user already has without being told to. ``why`` says where an unnamed file comes from (e.g.
    "written beside m.safetensors") so the refusal names what the user typed."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{option} {p}: is a folder; give a file name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {p}: {parent} is a file, not a folder")
    if not force and (p.exists() or p.is_symlink()):
        if why:
            raise UserError(f"{p} exists ({why}); use --force to replace it, or choose another {option}")
        raise UserError(f"{option} {p}: exists; use --force to replace it, or give another name")


def check_output_folder(path: str | os.PathLike, option: str) -> None:
    """Before any work: ``path`` can be a folder (it is not an existing file, nor below one)."""
    p = Path(path)
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "exists and is a file" if probe == p else f"is below {probe}, which is a file"
        raise UserError(f"{option} {p}: {what}; give a folder")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN/Infinity float replaced by ``None``: bare ``NaN`` is not JSON (strict readers,
    ``jq``, browsers refuse the whole file), ``null`` says "no value" in every language."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON of ``obj`` (non-finite floats written as ``null``, never as ``NaN``/``Infinity``)."""
    return json.dumps(finite_json(obj), indent=indent, sort_keys=False, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json_text(obj, indent=2) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (a whole line per write; a torn last line is skipped by readers)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json_text(record) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file, ignoring a torn final line left by a killed writer."""
    p = Path(path)
    if not p.exists():
        return []
    return parse_jsonl(p.read_text(encoding="utf-8"))


def parse_jsonl(text: str) -> list[dict]:
    """The records of JSONL ``text``, skipping a torn line left by a killed writer."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
