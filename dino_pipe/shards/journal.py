"""The progress journal of an unfinished shard set: which shards are done, with their checksums.

``.dino-pipe-shard-journal.jsonl`` in the shard set folder: a header line naming the run's
fingerprint, then one line per finished shard (written after the shard's tar and index were
renamed into place). Each line is one ``write`` of a whole line; a line torn by ``kill -9`` is
ignored on reading. On resume the journal is rewritten atomically (temp + rename) to the records
whose files still match their sha256. When the manifest is written, the journal is deleted:
manifest present = set complete.

A set written to an object store, which cannot append, keeps its journal as objects instead:
``.dino-pipe-shard-journal/header.json`` and one ``shard-NNNNNN.json`` per finished shard
(:mod:`dino_pipe.shards.remote`). :func:`stored_header` and :func:`stored_records` read either form
through the :class:`~dino_pipe.storage.store.Store` protocol.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from dino_pipe.atomic import append_jsonl, atomic_write_text, parse_jsonl, read_jsonl
from dino_pipe.storage.store import Store

JOURNAL_NAME = ".dino-pipe-shard-journal.jsonl"
JOURNAL_DIR = ".dino-pipe-shard-journal"  # the object-store form: a folder of JSON objects
HEADER = "header.json"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_journal(folder: Path) -> tuple[dict | None, list[dict]]:
    """(header, shard records) of the journal in ``folder``; (None, []) when there is none.

    The header holds at least ``fingerprint`` (plus source/options, for error messages).
    """
    return _header_and_records(read_jsonl(folder / JOURNAL_NAME))


def _header_and_records(lines: list[dict]) -> tuple[dict | None, list[dict]]:
    if not lines or "fingerprint" not in lines[0]:
        return None, []
    return lines[0], [r for r in lines[1:] if "shard" in r]


def read_json(store: Store, key: str) -> dict | None:
    """A JSON object of ``store``: None when missing, ``{}`` when unreadable."""
    raw = store.get_bytes(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {}


def _read_lines(store: Store) -> tuple[dict | None, list[dict]]:
    """The file form of the journal, read through ``store``."""
    return _header_and_records(parse_jsonl((store.get_bytes(JOURNAL_NAME) or b"").decode("utf-8")))


def stored_header(store: Store, files: dict[str, int], dirs: list[str]) -> dict | None:
    """The journal header of the set in ``store`` (whose listing is ``files``, ``dirs``), in either form."""
    if JOURNAL_NAME in files:
        return _read_lines(store)[0]
    if JOURNAL_DIR in dirs:
        return read_json(store, f"{JOURNAL_DIR}/{HEADER}")
    return None


def stored_records(store: Store, files: dict[str, int]) -> list[dict]:
    """The finished-shard records of the journal in ``store``, in either form."""
    if JOURNAL_NAME in files:
        return _read_lines(store)[1]
    names, _ = store.list(JOURNAL_DIR)
    records = [read_json(store, f"{JOURNAL_DIR}/{n}") for n in sorted(names) if n.startswith("shard-")]
    return [r for r in records if r and "shard" in r]


def write_journal(folder: Path, header: dict, records: list[dict]) -> None:
    """Atomically replace the journal with ``header`` and ``records``."""
    lines = [json.dumps(header)] + [json.dumps(r) for r in records]
    atomic_write_text(folder / JOURNAL_NAME, "\n".join(lines) + "\n")


def append_record(folder: Path, record: dict) -> None:
    append_jsonl(folder / JOURNAL_NAME, record)


def remove_journal(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (folder / JOURNAL_NAME).unlink()


def record_is_intact(folder: Path, record: dict) -> bool:
    """A finished shard survives a resume only if its tar and index match the recorded sha256."""
    if not record.get("samples"):
        return True  # every source file of this shard was skipped: nothing on disk
    tar, idx = folder / record["file"], folder / record["index"]
    try:
        if tar.stat().st_size != record["bytes"]:
            return False
        return file_sha256(idx) == record["index_sha256"] and file_sha256(tar) == record["sha256"]
    except OSError:
        return False
