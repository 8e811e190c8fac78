"""A bounded local cache of remote shard sets: whole shards fetched ahead of the reader.

:func:`fill_cache` turns a store (``s3://bucket/prefix``) into a local folder
``<cache>/s3/<bucket>/<prefix>/`` holding the files it is given (a shard set's tars and ``.idx``
files, then its ``manifest.json``: :mod:`dino_pipe.shards.fetch` reads the manifest and says which),
which DALI's webdataset reader then reads like any local shard set. Why whole shards and not DALI's own
``s3://`` reader: DALI sends one ranged GET per sample component (plus a HEAD per object), so
requests (and the bill, and throttling) grow with samples; here each tar and each index is one GET,
fetched by ``threads`` downloads in parallel, so the first epoch is limited by bandwidth, and later
epochs read local disk.

* **sha256**: every tar is hashed while it streams in and must match the manifest, else one
  UserError line and nothing is kept. A cached shard is trusted when its size and the sha256 it was
  checked against (a ``.<tar>.sha256`` marker written last) still match the manifest; a changed
  manifest refetches exactly the shards that changed. Files reach the cache only through the
  :class:`~dino_pipe.storage.store.Store` protocol.
* **bounds**: downloads stream in 1 MiB chunks (memory ~ ``threads`` MiB); the cache folder holds at
  most ``max_bytes``: least recently used *other* sets are evicted first, and a set larger than the
  bound is refused with one line (the reader needs every shard of the set on local disk; training
  rotates shards between ranks, so each rank reads the whole set). Such a set is streamed instead
  (:mod:`dino_pipe.storage.stream`), which makes room in the same folder with :func:`evict`.
* **atomic**: files are renamed into place only once complete and checked, so a killed fetch leaves
  no shard that looks finished; rerunning fetches only what is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from dino_pipe.atomic import _UMASK, atomic_write_bytes, atomic_write_text
from dino_pipe.errors import UserError
from dino_pipe.storage.store import Store
from dino_pipe.storage.url import url_scheme

USED_MARKER = ".dino-pipe-cache-used"
DEFAULT_GB = 200.0
DEFAULT_THREADS = 8


@dataclass(frozen=True)
class CacheSettings:
    """Where remote shard sets are cached, how many bytes the cache may hold, parallel downloads."""

    folder: Path
    max_bytes: int
    threads: int

    @classmethod
    def resolve(cls, folder: str = "", gb: float = 0.0, threads: int = 0) -> "CacheSettings":
        """Config values win; empty/0 fall back to ``DINO_PIPE_CACHE``, ``DINO_PIPE_CACHE_GB``,
        ``DINO_PIPE_FETCH_THREADS``, then ``~/.cache/dino-pipe``, 200 GB, 8 threads."""
        env = os.environ
        folder = (
            folder
            or env.get("DINO_PIPE_CACHE")
            or str(Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dino-pipe")
        )
        try:
            gb = float(gb or env.get("DINO_PIPE_CACHE_GB") or DEFAULT_GB)
            threads = int(threads or env.get("DINO_PIPE_FETCH_THREADS") or DEFAULT_THREADS)
        except ValueError:
            raise UserError("DINO_PIPE_CACHE_GB / DINO_PIPE_FETCH_THREADS must be numbers") from None
        if gb <= 0 or threads < 1:
            raise UserError("data.cache_gb must be > 0 and data.fetch_threads >= 1")
        return cls(Path(folder).expanduser(), int(gb * 1e9), threads)

    @classmethod
    def from_config(cls, data_cfg) -> "CacheSettings":
        return cls.resolve(getattr(data_cfg, "cache_dir", ""), getattr(data_cfg, "cache_gb", 0.0),
                           getattr(data_cfg, "fetch_threads", 0))


@dataclass(frozen=True)
class CachedFile:
    """One file of a set to cache: checked by size and sha256, with a companion file fetched after it
    (a shard's ``.idx``), trusted as it is."""

    name: str
    size: int
    sha256: str
    companion: str


def cache_folder(settings: CacheSettings, url: str) -> Path:
    """``<cache>/<scheme>/<rest of the URL>``: ``s3://bucket/prefix`` -> ``<cache>/s3/bucket/prefix``."""
    text = str(url)
    rest = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*:/+", "", text)
    return settings.folder / (url_scheme(text) or "file") / rest.strip("/")


def _marker(folder: Path, file: str) -> Path:
    return folder / f".{file}.sha256"


def is_cached(folder: Path, entry: CachedFile) -> bool:
    """``entry`` and its companion are in ``folder``, complete and checked against its sha256."""
    tar, idx, marker = folder / entry.name, folder / entry.companion, _marker(folder, entry.name)
    try:
        return tar.stat().st_size == entry.size and idx.is_file() and marker.read_text().strip() == entry.sha256
    except OSError:
        return False


def _set_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def evict(settings: CacheSettings, keep: Path, need: int) -> list[Path]:
    """Delete least recently used cached sets (never ``keep``) until ``need`` more bytes fit."""
    sets = sorted(
        (m.stat().st_mtime, m.parent) for m in settings.folder.glob(f"*/**/{USED_MARKER}") if m.parent != keep
    )
    used = _set_bytes(keep) + sum(_set_bytes(f) for _, f in sets)
    evicted = []
    for _, folder in sets:
        if used + need <= settings.max_bytes:
            break
        used -= _set_bytes(folder)
        for p in folder.iterdir():
            if p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
        evicted.append(folder)
    return evicted


def download_checked(store: Store, key: str, dest: Path, sha256: str | None, size: int | None, what: str) -> None:
    """Download ``key`` to ``dest`` through a temp file beside it, renamed into place only when its size and
    sha256 (when given) match; one UserError line naming ``what`` otherwise."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".fetch", dir=dest.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode of a new file
        with os.fdopen(fd, "w+b") as f:
            n, digest = store.download(key, f)
        if size is not None and n != size:
            raise UserError(f"{what}: {dest.name} in the store has {n} bytes, manifest.json says {size} "
                            "(replaced or truncated in the store); re-shard or re-upload the set")
        if sha256 is not None and digest != sha256:
            raise UserError(f"{what}: {dest.name} in the store does not match its sha256 in manifest.json "
                            f"({digest[:12]}… vs {sha256[:12]}…; corrupted or replaced); re-shard or re-upload the set")
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fetch_file(store: Store, folder: Path, entry: CachedFile) -> int:
    """Fetch one file and its companion (one GET each), checked; returns the bytes fetched."""
    with contextlib.suppress(FileNotFoundError):
        _marker(folder, entry.name).unlink()
    download_checked(store, entry.name, folder / entry.name, entry.sha256, entry.size, store.url)
    download_checked(store, entry.companion, folder / entry.companion, None, None, store.url)
    atomic_write_text(_marker(folder, entry.name), entry.sha256 + "\n")
    return entry.size


def fill_cache(store: Store, files: list[CachedFile], last: tuple[str, bytes], settings: CacheSettings | None = None,
               progress: bool = False) -> Path:
    """The cache folder of ``store`` holding every one of ``files``, checked, then ``last`` (name, bytes:
    the set's manifest) written once they are all in. Files of an older version of the set are removed."""
    settings = settings or CacheSettings.resolve()
    total = sum(e.size for e in files)
    if total > settings.max_bytes:
        raise UserError(f"shard set {store.url} holds {total / 1e9:.1f} GB, more than the shard cache may hold "
                        f"({settings.max_bytes / 1e9:.1f} GB); raise data.cache_gb (or DINO_PIPE_CACHE_GB), "
                        "or for training stream it (data.read_mode=stream)")
    folder = cache_folder(settings, store.url)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create the shard cache {folder}: {e.strerror or e}; set data.cache_dir or DINO_PIPE_CACHE"
        ) from None
    name, data = last
    staged = folder / f".{name}.{os.getpid()}.remote"
    atomic_write_bytes(staged, data)
    with _locked(folder):  # ranks of one node sharing the cache: one fetches, the others then find it done
        (folder / USED_MARKER).touch()
        todo = [e for e in files if not is_cached(folder, e)]
        if todo:
            evict(settings, keep=folder, need=sum(e.size for e in todo))
            _fetch_all(store, folder, todo, settings.threads, progress)
        os.replace(staged, folder / name)
        listed = {n for e in files for n in (e.name, e.companion, _marker(folder, e.name).name)}
        suffixes = tuple({Path(n).suffix for e in files for n in (e.name, e.companion)} | {".sha256", ".fetch"})
        for p in folder.iterdir():  # files of an older version of the set, temp files of killed fetches
            if p.is_file() and p.name not in listed and p.name.endswith(suffixes):
                with contextlib.suppress(OSError):
                    p.unlink()
    return folder


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive ``flock`` on ``folder/.lock`` (released when the process dies, even by kill -9)."""
    import fcntl

    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fetch_all(store: Store, folder: Path, todo: list[CachedFile], threads: int, progress: bool) -> None:
    from dino_pipe.progress import make_progress

    with make_progress("MB", disable=not progress) as bar, ThreadPoolExecutor(max_workers=threads) as pool:
        task = bar.add_task(f"fetch {store.url}", total=sum(e.size for e in todo) / 1e6)
        futures = {pool.submit(fetch_file, store, folder, e) for e in todo}
        while futures:
            done, futures = wait(futures, return_when=FIRST_COMPLETED)
            for f in done:
                if f.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise f.exception()
                bar.update(task, advance=f.result() / 1e6)

