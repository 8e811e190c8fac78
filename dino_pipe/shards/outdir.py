"""The output of a shard set (a local folder or a store): what is already there, and what a run may do with it.

:func:`inspect_output` is the one check for every store: it reads the output through the
:class:`~dino_pipe.storage.store.Store` protocol (a listing with sizes, the journal in either form,
the manifest).

* same fingerprint (source path + tree listing + output options + version) and a journal ->
  **resume**; a complete manifest whose files are all present -> **up to date** (nothing to do);
* a different shard set, an unreadable manifest, or ``*.tar``/``*.idx`` files not written by
  dino-pipe -> a one-line :class:`~dino_pipe.errors.UserError` naming what differs, unless
  ``--force`` (which then deletes only ``*.tar``, ``*.idx``, the manifest and the journal);
* before writing: the folder is created and checked writable, and temp files left by a killed
  run are removed.

Nothing here writes until :func:`prepare_output`, and every split's folder is inspected before any
is prepared, so a refused run changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dino_pipe import __version__
from dino_pipe.errors import UserError
from dino_pipe.shards import journal
from dino_pipe.shards.layout import SourceSplit
from dino_pipe.shards.manifest import MANIFEST_NAME
from dino_pipe.storage.store import Store
from dino_pipe.storage.url import is_remote

if TYPE_CHECKING:
    from dino_pipe.shards.options import ShardOptions


def fingerprint(source: str, split: SourceSplit, options: ShardOptions) -> str:
    """What makes two runs the same shard set: source path + tree listing, options, version."""
    ident = {"source": source, "split": split.name, "source_digest": split.digest, "classes": split.classes,
             "options": options.output_options(), "version": __version__}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _describe_difference(old: dict, source: str, split: SourceSplit, options: ShardOptions) -> str:
    diffs = []
    if old.get("source") != source:
        diffs.append(f"its source is {old.get('source')}")
    old_opts = old.get("options") or {}
    for k, v in options.output_options().items():
        if k in old_opts and old_opts[k] != v:
            diffs.append(f"{k}={old_opts[k]} (now {v})")
    if not diffs and old.get("source_digest") != split.digest:
        diffs.append("the source tree changed since (files added, removed or modified)")
    if not diffs and old.get("dino_pipe_version") != __version__:
        diffs.append(f"written by dino-pipe {old.get('dino_pipe_version')}")
    return "; ".join(diffs) or "different source or options"


_STALE_PATTERNS = (".shard-*.tmp", f".{MANIFEST_NAME}.*.tmp", f".{journal.JOURNAL_NAME}.*.tmp")


@dataclass
class OutputState:
    mode: str  # fresh | resume | up_to_date
    records: list[dict]
    manifest: dict | None = None


def inspect_output(
    store: Store, fp: str, source: str, split: SourceSplit, options: ShardOptions, force: bool
) -> OutputState:
    """Decide what to do with what is already in the output ``store`` (a folder, ``s3://…``), changing nothing.

    Same fingerprint: resume the journal, or report the finished set as up to date. A different
    shard set (or foreign tar/idx files) is an error unless ``force``.
    """
    files, dirs = store.list()
    header = journal.stored_header(store, files, dirs)
    if header and header.get("fingerprint") == fp and not force:
        return OutputState("resume", journal.stored_records(store, files))
    old = _read_manifest(store) if MANIFEST_NAME in files else None
    if force:
        return OutputState("fresh", [])
    if old is not None:
        if old.get("fingerprint") == fp and header is None:
            complete = all(files.get(s["file"]) == s["bytes"] and s["index"] in files for s in old.get("shards", []))
            return OutputState("up_to_date" if complete else "fresh", [], old)
        why = _describe_difference(old, source, split, options) if old else "its manifest.json is unreadable"
        raise UserError(
            f"{store.url} already holds a different shard set ({why}); "
            "use --force to replace it or choose another --out"
        )
    if header is not None:
        why = _describe_difference(header, source, split, options)
        raise UserError(
            f"{store.url} holds an unfinished shard set of a different run ({why}); "
            "use --force to replace it or choose another --out"
        )
    foreign = sorted(n for n in files if n.endswith((".tar", ".idx")))
    if foreign:
        noun = "objects" if is_remote(store.url) else "files"
        raise UserError(
            f"{store.url} already holds {foreign[0]} (and {len(foreign) - 1} more tar/idx {noun}) "
            "not written by this run; use --force to replace them or choose another --out"
        )
    return OutputState("fresh", [])


def _read_manifest(store: Store) -> dict:
    """The manifest already in ``store`` as a dict; ``{}`` when unreadable."""
    try:
        return journal.read_json(store, MANIFEST_NAME) or {}
    except OSError:
        return {}


def check_folder(folder: Path) -> None:
    """A local output that exists must be a folder."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output {folder} exists and is not a folder; choose another --out")


def check_creatable(folder: Path) -> None:
    """Fail early (before walking a large tree) when ``folder`` cannot be created or written."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write to output folder {folder}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to output folder {folder}: no write permission on {probe}")


def prepare_output(folder: Path, force: bool) -> None:
    """Create the folder, check it is writable, remove temp files of killed runs (and with
    ``force``, the previous set's tar/idx/manifest/journal)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output folder {folder}: {e.strerror or e}") from None
    patterns = list(_STALE_PATTERNS)
    if force:
        patterns += ["*.tar", "*.idx", MANIFEST_NAME, journal.JOURNAL_NAME]
    for pattern in patterns:
        for p in folder.glob(pattern):
            with contextlib.suppress(OSError):
                p.unlink()
