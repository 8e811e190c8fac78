"""A shard set in a store (``s3://bucket/prefix``) as a local folder: its manifest read, its shards
fetched into the bounded shard cache (:mod:`dino_pipe.storage.cache`), one GET per tar and per index.

The store's ``manifest.json`` says which files make the set and their sizes and sha256; the cache
fetches and checks them, and writes the manifest last. A location without a manifest is one line
naming what is there instead (shard sets one level below, an unfinished ``dino-pipe shard`` run).
"""

from __future__ import annotations

import os
from pathlib import Path

from dino_pipe.errors import UserError
from dino_pipe.shards.manifest import MANIFEST_NAME, parse_manifest
from dino_pipe.storage.cache import CachedFile, CacheSettings, fill_cache
from dino_pipe.storage.store import Store, open_store
from dino_pipe.storage.url import is_remote


def read_remote_manifest(store: Store) -> bytes:
    """The raw ``manifest.json`` of the set in ``store``; one line naming what is there instead."""
    raw = store.get_bytes(MANIFEST_NAME)
    if raw is not None:
        return raw
    url = store.url
    files, dirs = store.list()
    subsets = [d for d in dirs if store.child(d).stat(MANIFEST_NAME) is not None]
    if subsets:
        example = store.describe(subsets[0])
        raise UserError(f"{url} holds shard sets {', '.join(subsets)}; give one of them (e.g. {example})")
    if any(d.startswith(".dino-pipe-shard-journal") for d in dirs):
        raise UserError(f"{url} has no {MANIFEST_NAME} (an interrupted 'dino-pipe shard' run: rerun it to finish)")
    raise UserError(
        f"{url} has no {MANIFEST_NAME}: check the URL, or write a set there with 'dino-pipe shard SRC --out {url}'"
    )


def fetch_shardset(location: str, settings: CacheSettings | None = None, progress: bool = False) -> Path:
    """The local cache folder holding the complete, sha256-checked shard set at ``location``."""
    store = open_store(location)
    raw = read_remote_manifest(store)
    manifest = parse_manifest(raw, store.describe(MANIFEST_NAME))
    files = [CachedFile(e["file"], int(e["bytes"]), e["sha256"], e["index"]) for e in manifest["shards"]]
    return fill_cache(store, files, (MANIFEST_NAME, raw), settings, progress)


def resolve_shardset(
    location: str | os.PathLike, settings: CacheSettings | None = None, progress: bool = False
) -> Path:
    """A local folder for ``location``: itself when local, the filled cache folder for a URL."""
    if is_remote(location):
        return fetch_shardset(str(location), settings, progress)
    return Path(location)


def read_manifest_at(location: str | os.PathLike) -> tuple[Store, dict]:
    """The store of the shard set at ``location`` (a URL or a local folder) and its parsed manifest."""
    store = open_store(location)
    raw = read_remote_manifest(store)
    return store, parse_manifest(raw, store.describe(MANIFEST_NAME))


def choose_read_mode(location: str | os.PathLike, mode: str, settings: CacheSettings) -> str:
    """How to read the set at ``location`` for ``data.read_mode`` = ``mode``: ``"stream"``, ``"cache"`` (fetch
    whole into the cache) or ``"disk"`` (a local set read in place).

    ``auto``: a remote set larger than the cache bound streams, one that fits is cached whole; a local set is
    read in place. ``stream`` streams either kind; ``cache`` caches a remote set (a local one is read in place).
    """
    if mode == "stream":
        return "stream"
    if not is_remote(location):
        return "disk"
    if mode == "cache":
        return "cache"
    _, manifest = read_manifest_at(str(location))
    total = sum(int(e["bytes"]) for e in manifest["shards"])
    return "stream" if total > settings.max_bytes else "cache"
