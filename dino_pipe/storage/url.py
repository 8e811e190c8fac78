"""Locations: a local path, or a URL (``s3://bucket/prefix``) told apart by its scheme.

``pathlib.Path("s3://b/k")`` silently becomes the local path ``s3:/b/k``, so every place that takes
a location checks for a URL first: places that take URLs open them with
:func:`~dino_pipe.storage.store.open_store`, the rest refuse them with one line (:func:`refuse_url`).
"""

from __future__ import annotations

import os
import re

from dino_pipe.errors import UserError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")


def url_scheme(value: str | os.PathLike) -> str | None:
    """``"s3"`` for ``s3://…`` (and for ``s3:/…``, what ``Path`` makes of it); None for a local path."""
    m = _SCHEME.match(str(value))
    if not m or len(m.group(1)) == 1:  # "C:/..." is a Windows drive, not a scheme
        return None
    return m.group(1).lower()


def is_remote(value: str | os.PathLike | None) -> bool:
    return value is not None and url_scheme(value) is not None


def refuse_url(value: str | os.PathLike, what: str) -> None:
    """One-line UserError when ``value`` is a URL where only local paths are supported."""
    scheme = url_scheme(value)
    if scheme is not None:
        shown = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*):/(?!/)", r"\1://", str(value))  # Path("s3://b") is "s3:/b"
        raise UserError(f"{what} {shown}: {scheme}:// locations are not supported here; give a local path")
