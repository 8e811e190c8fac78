"""``manifest.json``: the contract between a shard set and whoever reads it.

Keys (version 1)::

    format: "dino-pipe-shards"      version: 1
    num_samples: int                classes: [names in label order] ([] when unlabeled)
    labeled: bool                   split: "train" | "val" | null
    shards: [{file, index, samples, bytes, sha256}, ...]   (file/index relative to the folder)
    skipped: [{path, reason}]       ignored: int (non-image files)
    skipped_links: [{path, reason}] (symlinks not followed: leaving the tree or looping)
    converted: int                  conversions: {reason: count}
    converted_files: [{path, reason}] (each re-encoded image and why)
    class_names: [human names in label order] | null   (ImageNet: from the devkit or LOC_synset_mapping.txt)
    label_source: str | null        (the file that labels a flat split: devkit, LOC_val_solution.csv)
    skipped_folders: [{path, reason}] (source folders not sharded, e.g. ImageNet's unlabelled test/)
    options: {...all options used}  source: absolute SRC    source_files: int
    fingerprint: str (source tree + output-affecting options + version)
    dino_pipe_version: str

The data package needs only ``num_samples``, ``classes``, ``labeled`` and ``shards``; anything that
writes those (e.g. ``tests/conftest.py::write_minimal_shardset``) is a valid shard set. Keys added
later (``converted_files``, ``class_names``, ``label_source``, ``skipped_folders``) are optional: older
manifests without them stay valid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dino_pipe import __version__
from dino_pipe.atomic import atomic_write_json
from dino_pipe.errors import UserError

if TYPE_CHECKING:
    from dino_pipe.shards.layout import SourceSplit
    from dino_pipe.shards.options import ShardOptions

MANIFEST_NAME = "manifest.json"
FORMAT = "dino-pipe-shards"
VERSION = 1
SHARD_KEYS = ("file", "index", "samples", "bytes", "sha256")


def save_manifest(folder: str | os.PathLike, manifest: dict) -> Path:
    path = Path(folder) / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def read_manifest_file(path: Path) -> dict:
    """Parse a manifest file; UserError (one line) when unreadable or not a dino-pipe manifest."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        hint = "; check the permissions of the shard set folder and its files" if isinstance(e, PermissionError) else ""
        raise UserError(f"cannot read {path}: {e.strerror}{hint}") from None
    return parse_manifest(raw, str(path))


def parse_manifest(raw: bytes, shown: str) -> dict:
    """Parse the bytes of a manifest named ``shown`` in messages (a path or a URL); one UserError line
    when it is not a dino-pipe manifest."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{shown} is not valid JSON ({e}); rerun 'dino-pipe shard' to rewrite it") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{shown} is not a dino-pipe shard manifest (format is not '{FORMAT}')")
    if data.get("version") != VERSION:
        raise UserError(f"{shown} has manifest version {data.get('version')!r}; this dino-pipe reads version {VERSION}")
    shards = data.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and all(k in s for k in SHARD_KEYS) for s in shards):
        raise UserError(f"{shown}: 'shards' must be a list of {{{', '.join(SHARD_KEYS)}}} entries")
    for key, kind in (("num_samples", int), ("classes", list), ("labeled", bool)):
        if not isinstance(data.get(key), kind):
            raise UserError(f"{shown}: key '{key}' is missing or not a {kind.__name__}")
    return data


def load_manifest(path: str | os.PathLike) -> dict:
    """Load a shard set's manifest from its folder (or the ``manifest.json`` path itself).

    Raises UserError naming the problem: missing folder, missing/unreadable manifest, a parent
    folder holding ``train/``/``val/`` sets instead of one set, or an empty set.
    """
    p = Path(path)
    if p.name == MANIFEST_NAME and p.is_file():
        folder, file = p.parent, p
    else:
        folder, file = p, p / MANIFEST_NAME
    if not folder.exists():
        raise UserError(f"shard set folder {folder} does not exist (make one with 'dino-pipe shard SRC')")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a shard set folder")
    if not file.is_file():
        subsets = [d.name for d in sorted(folder.iterdir()) if (d / MANIFEST_NAME).is_file()] if folder.is_dir() else []
        if subsets:
            raise UserError(
                f"{folder} holds shard sets {', '.join(subsets)}; give one of them (e.g. {folder / subsets[0]})"
            )
        journal = any(folder.glob(".dino-pipe-shard-journal*"))
        hint = (
            "an interrupted 'dino-pipe shard' run: rerun it to finish" if journal else "run 'dino-pipe shard SRC' first"
        )
        raise UserError(f"{folder} has no {MANIFEST_NAME} ({hint})")
    data = read_manifest_file(file)
    if not data["shards"] or data["num_samples"] <= 0:
        raise UserError(f"shard set {folder} is empty (0 samples in {MANIFEST_NAME})")
    return data


def build_manifest(split: SourceSplit, source: str, fp: str, options: ShardOptions, records: list[dict]) -> dict:
    """The manifest of a finished shard set, from its journal records (shards in number order)."""
    from dino_pipe.shards.options import default_workers

    conversions: dict[str, int] = {}
    skipped, converted = [], []
    for r in records:
        skipped += r["skipped"]
        converted += r.get("converted", [])
        for k, v in r["conversions"].items():
            conversions[k] = conversions.get(k, 0) + v
    shards = [
        {"file": r["file"], "index": r["index"], "samples": r["samples"], "bytes": r["bytes"], "sha256": r["sha256"]}
        for r in records
        if r["samples"]
    ]
    return {
        "format": FORMAT,
        "version": VERSION,
        "split": split.name,
        "num_samples": sum(s["samples"] for s in shards),
        "classes": split.classes,
        "class_names": split.class_names,
        "labeled": split.labels is not None,
        "shards": shards,
        "skipped": sorted(skipped, key=lambda s: s["path"]),
        "ignored": split.ignored,
        "skipped_links": split.skipped_links,
        "converted": sum(conversions.values()),
        "conversions": dict(sorted(conversions.items())),
        "converted_files": sorted(converted, key=lambda c: c["path"]),
        "label_source": split.label_source,
        "skipped_folders": split.skipped_folders,
        "options": {**options.output_options(), "workers": options.workers or default_workers()},
        "source": source,
        "source_files": len(split),
        "source_digest": split.digest,
        "fingerprint": fp,
        "dino_pipe_version": __version__,
    }
