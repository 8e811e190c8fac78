"""Shard-set locations: a local folder, or ``s3://bucket/prefix``.

``pathlib.Path("s3://b/k")`` silently becomes the local path ``s3:/b/k``, so every place that takes
a location checks for a URL first: supported ones go to :mod:`dino_pipe.storage`, the rest are
refused with one line (:func:`refuse_url`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str  # no leading or trailing "/"; "" = bucket root

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def child(self, name: str) -> "S3Url":
        return S3Url(self.bucket, self.key(name))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3(value: str | os.PathLike) -> S3Url:
    """``s3://bucket/prefix`` -> S3Url; other schemes and malformed URLs -> UserError."""
    text = str(value)
    scheme = url_scheme(text)
    if scheme != "s3":
        raise UserError(f"{text}: only s3:// URLs are supported for remote shard sets (got {scheme}://)")
    rest = re.sub(r"^[A-Za-z0-9]+:/+", "", text)
    bucket, _, prefix = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise UserError(f"{text}: '{bucket}' is not a valid S3 bucket name (expected s3://bucket/prefix)")
    return S3Url(bucket, prefix.strip("/"))
