"""``s3://bucket/prefix`` as a :class:`~dino_pipe.storage.store.Store`: any S3-compatible server
(AWS S3, MinIO, Ceph, …) through boto3.

Only what a shard set needs: list a "folder", GET a whole object (streamed, retried), PUT a whole
object (atomic: S3 makes an object visible only once its PUT completed), HEAD, DELETE. Every
failure becomes one :class:`~dino_pipe.errors.UserError` line that says which of missing
credentials, refused credentials, unknown bucket or key, or unreachable endpoint it is, and what to
check. Settings come from the usual AWS variables: ``AWS_ENDPOINT_URL`` (any S3-compatible server;
path-style addressing is then used), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or
``AWS_PROFILE`` / ``~/.aws``), ``AWS_DEFAULT_REGION``.

:class:`S3Bucket` is the client of one bucket (checked reachable once per process); :class:`S3Store`
is a prefix in it, the store the rest of dino-pipe sees. ``requests`` counts the HTTP requests sent,
by operation (benchmarks report requests per shard).
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable

from dino_pipe.errors import UserError
from dino_pipe.storage.store import Stat
from dino_pipe.storage.url import url_scheme

CHUNK = 1 << 20  # bytes per read of a GET body: memory per download in flight
DOWNLOAD_TRIES = 4  # whole-object attempts when a connection drops mid-transfer (plus botocore's own retries)


def _boto():
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise UserError("s3:// locations need boto3: pip install 'dino-pipe[s3]' (or pip install boto3)") from None
    return boto3, botocore.config, botocore.exceptions


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str  # no leading or trailing "/"; "" = bucket root

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3(value: str | os.PathLike) -> S3Url:
    """``s3://bucket/prefix`` -> S3Url; malformed URLs -> UserError."""
    text = str(value)
    scheme = url_scheme(text)
    if scheme != "s3":
        raise UserError(f"{text}: only s3:// URLs are supported for remote shard sets (got {scheme}://)")
    rest = re.sub(r"^[A-Za-z0-9]+:/+", "", text)
    bucket, _, prefix = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise UserError(f"{text}: '{bucket}' is not a valid S3 bucket name (expected s3://bucket/prefix)")
    return S3Url(bucket, prefix.strip("/"))


class S3Bucket:
    """The client of one bucket, checked reachable and readable with these credentials on creation.

    Its methods take whole keys; :class:`S3Store` adds the prefix."""

    def __init__(self, url: S3Url, retries: int = 3, connect_timeout: float = 5.0, read_timeout: float = 30.0):
        boto3, bconfig, self._exc = _boto()
        self.bucket = url.bucket
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        cfg = bconfig.Config(retries={"max_attempts": retries, "mode": "standard"}, connect_timeout=connect_timeout,
                             read_timeout=read_timeout, s3={"addressing_style": "path" if endpoint else "auto"},
                             max_pool_connections=32)
        try:
            self.client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=cfg)
        except Exception as e:  # malformed endpoint URL, unknown region, ...
            raise UserError(
                f"cannot set up the S3 client for {url}: {e}; check AWS_ENDPOINT_URL and AWS_DEFAULT_REGION"
            ) from None
        self.endpoint = self.client.meta.endpoint_url
        self.requests: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.client.meta.events.register("before-send.s3", self._count)
        self._call(f"bucket {url.bucket}", lambda: self.client.head_bucket(Bucket=self.bucket))

    def _count(self, request, **_) -> None:
        with self._lock:
            self.requests[request.method] += 1

    # ------------------------------------------------------------------ errors
    def explain(self, e: Exception, what: str) -> UserError:
        """One line for a boto/botocore failure while accessing ``what``."""
        x = self._exc
        where = f"the S3 endpoint {self.endpoint}"
        if isinstance(e, (x.NoCredentialsError, x.PartialCredentialsError)):
            return UserError(f"no S3 credentials found for {what}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                             "(or AWS_PROFILE / ~/.aws/credentials)")
        if isinstance(e, (x.EndpointConnectionError, x.ConnectTimeoutError)):
            return UserError(f"cannot reach {where} for {what}: check AWS_ENDPOINT_URL and that the server is up")
        if isinstance(e, (x.ConnectionClosedError, x.ReadTimeoutError, x.ResponseStreamingError, x.HTTPClientError)):
            return UserError(f"lost the connection to {where} while reading {what} ({type(e).__name__}); "
                             "check the network and rerun (work already done is kept)")
        if isinstance(e, x.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (
                what.startswith("bucket ") and (code in ("404", "NotFound") or status == 404)
            ):
                return UserError(
                    f"bucket '{self.bucket}' does not exist at {where}: check the s3:// URL and AWS_ENDPOINT_URL"
                )
            if code in (
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "InvalidToken",
                "ExpiredToken",
                "InvalidClientTokenId",
                "AuthorizationHeaderMalformed",
            ) or (status == 403 and code in ("403", "Forbidden")):
                return UserError(f"{where} refused the credentials for {what} ({code or status}): "
                                 "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
            if code == "AccessDenied" or status == 403:
                return UserError(f"access denied to {what} at {where}: check that these credentials may read/write "
                                 "this bucket (AWS_ACCESS_KEY_ID / AWS_PROFILE)")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return UserError(f"{what} does not exist at {where}: check the s3:// URL")
            return UserError(f"S3 error on {what} at {where}: {code} {err.get('Message', '')}".rstrip())
        return UserError(f"S3 request for {what} at {where} failed: {type(e).__name__}: {e}")

    def _call(self, what: str, fn: Callable):
        try:
            return fn()
        except self._exc.BotoCoreError as e:
            raise self.explain(e, what) from None
        except self._exc.ClientError as e:
            raise self.explain(e, what) from None

    def _missing(self, e: Exception) -> bool:
        if not isinstance(e, self._exc.ClientError):
            return False
        code = str(e.response.get("Error", {}).get("Code", ""))
        return code in ("NoSuchKey", "404", "NotFound")

    def name(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # ------------------------------------------------------------------ reading
    def list_folder(self, folder: str) -> tuple[dict[str, int], list[str]]:
        """``({file name: size}, [sub-folder names])`` directly under the key prefix ``folder``."""
        prefix = f"{folder}/" if folder else ""
        files: dict[str, int] = {}
        dirs: list[str] = []

        def run():
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    files[obj["Key"][len(prefix):]] = int(obj["Size"])
                for p in page.get("CommonPrefixes", []):
                    dirs.append(p["Prefix"][len(prefix):].rstrip("/"))

        self._call(self.name(folder) if folder else f"s3://{self.bucket}", run)
        return files, dirs

    def head(self, key: str) -> Stat | None:
        """Size and metadata of an object, or None when it does not exist."""
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=key)
        except (self._exc.BotoCoreError, self._exc.ClientError) as e:
            if self._missing(e):
                return None
            raise self.explain(e, self.name(key)) from None
        return Stat(int(r["ContentLength"]), r.get("Metadata", {}))

    def get_bytes(self, key: str) -> bytes | None:
        """A small object whole (a manifest, a journal record); None when it does not exist."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (self._exc.BotoCoreError, self._exc.ClientError) as e:
            if self._missing(e):
                return None
            raise self.explain(e, self.name(key)) from None

    def download(self, key: str, out: BinaryIO) -> tuple[int, str]:
        """Stream ``key`` into ``out`` with one GET, hashing as it goes: ``(bytes, sha256 hex)``.

        A connection dropped mid-transfer is retried from the start (``DOWNLOAD_TRIES`` attempts,
        ``out`` truncated first); then one UserError line."""
        for attempt in range(DOWNLOAD_TRIES):
            out.seek(0)
            out.truncate()
            sha = hashlib.sha256()
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                n = 0
                for block in body.iter_chunks(CHUNK):
                    out.write(block)
                    sha.update(block)
                    n += len(block)
                return n, sha.hexdigest()
            except (self._exc.BotoCoreError, self._exc.ClientError) as e:
                transient = isinstance(e, (self._exc.ConnectionClosedError, self._exc.ReadTimeoutError,
                                           self._exc.ResponseStreamingError, self._exc.EndpointConnectionError))
                if not transient or attempt == DOWNLOAD_TRIES - 1:
                    raise self.explain(e, self.name(key)) from None
            time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ writing
    def put_file(self, key: str, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """One PUT of a whole file (atomic: readers see the old object or the new one)."""
        def run():
            with open(path, "rb") as f:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=f, Metadata=metadata or {})

        self._call(self.name(key), run)

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self._call(
            self.name(key),
            lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=metadata or {}),
        )

    def delete(self, keys: list[str], what: str) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            self._call(
                what,
                lambda b=batch: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}),
            )


class S3Store:
    """The prefix ``prefix`` of ``bucket`` as a :class:`~dino_pipe.storage.store.Store`."""

    def __init__(self, bucket: S3Bucket, prefix: str):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket.bucket}/{self.prefix}" if self.prefix else f"s3://{bucket.bucket}"

    @property
    def client(self):
        """The boto3 client (shared by every store of this bucket)."""
        return self.bucket.client

    @property
    def requests(self) -> collections.Counter[str]:
        """HTTP requests sent to this bucket so far, by method."""
        return self.bucket.requests

    def _key(self, key: str) -> str:
        return "/".join(p for p in (self.prefix, key) if p)

    def child(self, name: str) -> S3Store:
        return S3Store(self.bucket, self._key(name))

    def describe(self, key: str = "") -> str:
        return self.bucket.name(self._key(key)) if key else self.url

    def list(self, folder: str = "") -> tuple[dict[str, int], list[str]]:
        return self.bucket.list_folder(self._key(folder))

    def stat(self, key: str) -> Stat | None:
        return self.bucket.head(self._key(key))

    def get_bytes(self, key: str) -> bytes | None:
        return self.bucket.get_bytes(self._key(key))

    def download(self, key: str, out: BinaryIO) -> tuple[int, str]:
        return self.bucket.download(self._key(key), out)

    def put_file(self, key: str, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        self.bucket.put_file(self._key(key), path, metadata)

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self.bucket.put_bytes(self._key(key), data, metadata)

    def delete(self, keys: list[str]) -> None:
        self.bucket.delete([self._key(k) for k in keys], self.url)


_buckets: dict[str, S3Bucket] = {}
_buckets_lock = threading.Lock()


def open_s3(location: str) -> S3Store:
    """The store for ``s3://bucket/prefix``; its bucket client is made (and checked) once per process."""
    url = parse_s3(location)
    key = f"{url.bucket}|{os.environ.get('AWS_ENDPOINT_URL', '')}|{os.environ.get('AWS_ACCESS_KEY_ID', '')}"
    with _buckets_lock:
        if key not in _buckets:
            _buckets[key] = S3Bucket(url)
        return S3Store(_buckets[key], url.prefix)
