"""The storage seam: the one protocol every place bytes live implements, and :func:`open_store`.

A :class:`Store` is rooted at one location (a local folder, ``s3://bucket/prefix``, …); keys are
``/``-separated names relative to that root (``manifest.json``, ``.dino-pipe-shard-journal/header.json``).
Everything above this package (the shard writer's output, the shard cache, verify, the CLI) reaches
bytes only through :func:`open_store` and these methods; each implementation turns its failures into
one :class:`~dino_pipe.errors.UserError` line.

Adding a scheme (``gs://``, say) = one module implementing :class:`Store` with an ``open_*(url)``
function, plus one line in :data:`SCHEMES`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from dino_pipe.errors import UserError
from dino_pipe.storage.url import url_scheme


@dataclass(frozen=True)
class Stat:
    """What a store knows of one object without reading it."""

    size: int
    """Bytes."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Metadata stored with the object (S3 user metadata, e.g. ``sha256``); empty where a store keeps none."""


@runtime_checkable
class Store(Protocol):
    """Where bytes live, rooted at ``url``; keys are relative to it."""

    url: str
    """The root as a location the user writes: ``s3://bucket/prefix`` or a folder path."""

    def child(self, name: str) -> Store:
        """The store rooted at ``name`` under this root (a sub-folder, a longer prefix)."""
        ...

    def describe(self, key: str = "") -> str:
        """The full location of ``key`` (the root itself for ``""``), for messages."""
        ...

    def list(self, folder: str = "") -> tuple[dict[str, int], list[str]]:
        """``({file name: size}, [sub-folder names])`` directly under ``folder``; empty when nothing is there."""
        ...

    def stat(self, key: str) -> Stat | None:
        """Size and metadata of ``key``; None when it does not exist."""
        ...

    def get_bytes(self, key: str) -> bytes | None:
        """A small object whole (a manifest, a journal record); None when it does not exist."""
        ...

    def download(self, key: str, out: BinaryIO) -> tuple[int, str]:
        """Stream ``key`` into ``out`` (from its start), hashing as it goes: ``(bytes, sha256 hex)``."""
        ...

    def put_file(self, key: str, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """Store the file ``path`` as ``key``, atomically (readers see the old object or the new one)."""
        ...

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """Store ``data`` as ``key``, atomically."""
        ...

    def delete(self, keys: list[str]) -> None:
        """Remove ``keys`` (missing ones are no error)."""
        ...


SCHEMES: dict[str, str] = {
    "s3": "dino_pipe.storage.s3:open_s3",
}
"""URL scheme -> ``"module:function"`` that opens a :class:`Store` for such a URL (imported on first use)."""


def open_store(location: str | os.PathLike) -> Store:
    """The store for ``location``: a registered URL scheme, or a local folder for a plain path.

    An unregistered scheme is one UserError line naming the supported ones."""
    scheme = url_scheme(location)
    if scheme is None:
        from dino_pipe.storage.local import LocalStore

        return LocalStore(Path(location))
    if scheme not in SCHEMES:
        supported = ", ".join(f"{s}://" for s in SCHEMES)
        raise UserError(f"{location}: only {supported} URLs are supported for remote shard sets (got {scheme}://)")
    module, _, function = SCHEMES[scheme].partition(":")
    return getattr(importlib.import_module(module), function)(str(location))
