"""The deterministic, parallel, resumable shard writer behind ``dino-pipe shard``.

Data flow for one split (one shard set)::

    SourceSplit (sorted paths, labels, keys)
      -> plan_shards (seeded shuffle, cut by count/bytes)       fixed list of files per shard
      -> write_shard x N in worker processes                    tar + idx written atomically
           read file (or its byte range of an archive) -> prepare_image -> TarShardWriter -> sha256
      -> journal line per finished shard                        what a rerun may keep
      -> fsync each shard (a thread, as it is journaled), then   the set is complete and durable
         the folder, then manifest.json (atomic)
      -> journal removed

Each shard is a pure function of its planned file list and the options, so shards are written
independently (one task per shard, at most ``2 x workers`` tasks in flight: memory stays bounded
by one image per worker whatever the dataset size) and the result is byte-identical for any
number of workers and across interrupted + resumed runs.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from dino_pipe import __version__
from dino_pipe.atomic import atomic_open
from dino_pipe.errors import UserError
from dino_pipe.lock import output_lock
from dino_pipe.shards import journal
from dino_pipe.shards.archive import read_member
from dino_pipe.shards.image import UnreadableImage, prepare_image
from dino_pipe.shards.index import format_index, group_samples
from dino_pipe.shards.layout import SourceSplit
from dino_pipe.shards.manifest import build_manifest, save_manifest
from dino_pipe.shards.options import ShardOptions, default_workers
from dino_pipe.shards.outdir import (
    OutputState,
    check_creatable,
    check_folder,
    fingerprint,
    inspect_output,
    prepare_output,
)
from dino_pipe.shards.plan import plan_shards
from dino_pipe.shards.pool import WorkerPool, report_to_counter
from dino_pipe.shards.source import SourceTree, find_source
from dino_pipe.shards.tar import TarShardWriter
from dino_pipe.storage.store import open_store
from dino_pipe.storage.url import is_remote, refuse_url

if TYPE_CHECKING:
    from dino_pipe.shards.remote import RemoteOutput


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its number and its planned samples, in order."""

    folder: str
    number: int
    # (what to read: a file path or (archive, offset, size), path to report, key, label)
    items: list[tuple[str | tuple[str, int, int], str, str, int | None]]
    quality: int
    max_side: int | None
    check: str = "structure"


def shard_names(number: int) -> tuple[str, str]:
    return f"shard-{number:06d}.tar", f"shard-{number:06d}.idx"


class _HashingWriter:
    """A write-only file wrapper that feeds every byte to sha256 as well."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.f.write(data)


class _EmptyShard(Exception):
    pass


class _Reader:
    """Reads a task's sources: whole files, or byte ranges of archives (each archive opened once)."""

    def __init__(self):
        self.fds: dict[str, int] = {}

    def read(self, source: str | tuple[str, int, int]) -> bytes:
        if isinstance(source, str):
            with open(source, "rb") as f:
                return f.read()
        archive, offset, size = source
        if archive not in self.fds:
            self.fds[archive] = os.open(archive, os.O_RDONLY)
        return read_member(self.fds[archive], offset, size)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def write_shard(task: ShardTask, report: Callable[[int], None] | None = None) -> dict:
    """Write ``shard-NNNNNN.tar`` and ``.idx`` for ``task`` (atomically); return its journal record."""
    report = report or report_to_counter
    folder = Path(task.folder)
    tar_name, idx_name = shard_names(task.number)
    skipped: list[dict] = []
    conversions: dict[str, int] = {}
    converted: list[dict] = []
    reader = _Reader()
    try:
        with atomic_open(folder / tar_name, "wb", fsync=False) as f:  # made durable before the manifest
            sink = _HashingWriter(f)
            tar = TarShardWriter(sink)
            for source, shown, key, label in task.items:
                try:
                    image = prepare_image(reader.read(source), task.quality, task.max_side, task.check)
                except UnreadableImage as e:
                    skipped.append({"path": shown, "reason": str(e)})
                except OSError as e:
                    skipped.append({"path": shown, "reason": f"cannot read file ({e.strerror or e})"})
                else:
                    tar.add(f"{key}.jpg", image.data)
                    if label is not None:
                        tar.add(f"{key}.cls", str(label).encode("ascii"))
                    if image.conversion:
                        conversions[image.conversion] = conversions.get(image.conversion, 0) + 1
                        converted.append({"path": shown, "reason": image.conversion})
                report(1)
            if not tar.members:
                raise _EmptyShard
            size = tar.close()
    except _EmptyShard:
        return {"shard": task.number, "file": None, "index": None, "samples": 0, "bytes": 0, "sha256": None,
                "index_sha256": None, "skipped": skipped, "conversions": conversions, "converted": converted}
    finally:
        reader.close()
    samples = group_samples(tar.members)
    index_text = format_index(samples)
    with atomic_open(folder / idx_name, "w", fsync=False) as f:
        f.write(index_text)
    return {"shard": task.number, "file": tar_name, "index": idx_name, "samples": len(samples), "bytes": size,
            "sha256": sink.sha.hexdigest(), "index_sha256": hashlib.sha256(index_text.encode()).hexdigest(),
            "skipped": skipped, "conversions": conversions, "converted": converted}


# ---------------------------------------------------------------- one split -> one shard set


def _progress(progress: bool):
    from dino_pipe.progress import make_progress

    return make_progress("img", disable=not progress)


class FolderOutput:
    """A local folder as a shard set's output: the workers write the shards in place; each new shard is
    fsynced by a thread as soon as it is journaled (the disk writes overlap the work); the manifest goes
    last, once every shard is durable. (:class:`~dino_pipe.shards.remote.RemoteOutput` is the same
    steps for a store.)"""

    def __init__(self, folder: Path):
        self.folder = self.shown = folder
        self._syncer = ThreadPoolExecutor(1)
        self._synced: list[Future] = []
        self._fresh: set[str] = set()

    def start(self, header: dict, force: bool) -> None:
        """Nothing beyond the journal file every output keeps in its folder."""

    def intact(self, record: dict) -> bool:
        return journal.record_is_intact(self.folder, record)

    def publish(self, record: dict) -> None:
        """A finished shard is already in place: queue its fsync."""
        if record["file"]:
            names = [record["file"], record["index"]]
            self._synced.append(self._syncer.submit(_fsync_files, self.folder, names))
            self._fresh.update(names)

    def wait(self) -> None:
        """Every queued fsync done; an fsync error (EIO, ENOSPC at write-back) is raised like a write error."""
        try:
            for f in self._synced:
                f.result()
        finally:
            self._syncer.shutdown(wait=True)

    def finish(self, manifest: dict) -> None:
        kept = [name for s in manifest["shards"] for name in (s["file"], s["index"]) if name not in self._fresh]
        make_durable(self.folder, kept)
        save_manifest(self.folder, manifest)


def write_shard_set(split: SourceSplit, output: FolderOutput | RemoteOutput, source: str, fp: str, state: OutputState,
                    options: ShardOptions, force: bool = False, progress: bool = True) -> dict:
    """Shard one split into ``output`` (resuming ``state``); returns a summary of the set.

    The workers write into ``output.folder``: the set itself, or (a
    :class:`~dino_pipe.shards.remote.RemoteOutput`) a staging folder whose finished shards are uploaded
    (and removed locally), the manifest going to the store.
    """
    label = split.name or "all"
    folder = output.folder
    if state.mode == "up_to_date":
        m = state.manifest
        return _summary(m, output.shown, label, seconds=0.0, processed=0, resumed=len(m["shards"]),
                        status="up to date")
    prepare_output(folder, force)
    workers = options.workers or default_workers()
    plan = plan_shards(split.sizes, options.seed, options.shard_samples, int(options.shard_mb * 1e6))
    records: dict[int, dict] = {}
    if state.mode == "resume":
        for r in state.records:
            if 0 <= r["shard"] < len(plan) and output.intact(r):
                records[r["shard"]] = r
    header = {"fingerprint": fp, "source": source, "source_digest": split.digest, "options": options.output_options(),
              "dino_pipe_version": __version__}
    journal.write_journal(folder, header, [records[k] for k in sorted(records)])
    output.start(header, force)
    resumed = len(records)
    todo = [number for number in range(len(plan)) if number not in records]

    def tasks() -> Iterator[ShardTask]:  # built lazily: one shard's file list at a time
        for number in todo:
            items = [(_source(split, i), _shown(split, i), split.keys[i],
                      split.labels[i] if split.labels is not None else None) for i in plan[number]]
            yield ShardTask(str(folder), number, items, options.quality, options.max_side, options.check)

    base = sum(len(plan[k]) for k in records)
    start = time.perf_counter()
    with WorkerPool(min(workers, len(todo))) as pool, _progress(progress) as bar:
        bar_task = bar.add_task(f"shard {label}", total=len(split), completed=base)

        def on_record(record: dict) -> None:
            output.publish(record)
            journal.append_record(folder, record)
            records[record["shard"]] = record

        def on_progress(n: int) -> None:
            bar.update(bar_task, completed=base + n)

        try:
            pool.run(write_shard, tasks(), on_record, on_progress)
            output.wait()
        except OSError as e:  # disk full, folder removed under us, ...
            raise UserError(f"cannot write shards to {folder}: {e.strerror or e}; rerun to resume") from None
    manifest = build_manifest(split, source, fp, options, [records[k] for k in sorted(records)])
    output.finish(manifest)
    seconds = time.perf_counter() - start
    journal.remove_journal(folder)
    status = f"resumed ({resumed} shards kept)" if resumed else "written"
    return _summary(
        manifest, output.shown, label, seconds=seconds, processed=len(split) - base, resumed=resumed, status=status
    )


def _fsync_files(folder: Path, names: list[str]) -> None:
    """fsync each of ``names`` in ``folder`` (their data and size reach the disk)."""
    for name in names:
        fd = os.open(folder / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_durable(folder: Path, names: list[str]) -> None:
    """fsync ``names`` (shards kept from an earlier run) and the folder, before the manifest declares
    the set complete.

    Shards are renamed into place without an fsync in the worker (a killed process cannot tear them,
    and a resume re-checks every journaled shard's sha256); each new shard is fsynced by a thread of
    the main process as soon as it is journaled, so the disk writes overlap the work.
    """
    _fsync_files(folder, names)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _source(split: SourceSplit, i: int) -> str | tuple[str, int, int]:
    """What a worker reads for sample ``i``: its file, or its byte range in the split's archive."""
    if split.offsets is not None:
        return split.archive, split.offsets[i], split.sizes[i]
    return str(split.root / split.files[i])


def _shown(split: SourceSplit, i: int) -> str:
    return f"{split.name}/{split.files[i]}" if split.name else split.files[i]


def _summary(m: dict, folder: Path | str, label: str, seconds: float, processed: int, resumed: int,
             status: str) -> dict:
    return {
        "split": label,
        "out": str(folder),
        "status": status,
        "num_samples": m["num_samples"],
        "num_classes": len(m["classes"]),
        "shards": len(m["shards"]),
        "bytes": sum(s["bytes"] for s in m["shards"]),
        "converted": m["converted"],
        "skipped": len(m["skipped"]),
        "ignored": m["ignored"],
        "skipped_links": len(m.get("skipped_links", [])),
        "resumed_shards": resumed,
        "seconds": round(seconds, 3),
        "images_per_s": round(processed / seconds, 1) if seconds > 0 else None,
    }


# ---------------------------------------------------------------- the command


def shard_tree(src: str | os.PathLike, out: str | os.PathLike | None = None, options: ShardOptions | None = None,
               force: bool = False, progress: bool = True) -> dict:
    """``dino-pipe shard``: image tree ``src`` -> shard set(s) under ``out`` (see the module docstring).

    Default ``out``: ``shards/<name of src>``. ImageNet-style trees give ``out/train`` and
    ``out/val``. An ``out`` inside ``src`` is not read as source. Returns ``{"source", "out", "layout",
    "form", "notes": [one line each], "skipped_folders": [{path, reason}], "sets": [summary per set]}``.
    """
    options = options or ShardOptions()
    options.validate()
    refuse_url(src, "SRC")
    src_path = Path(src)
    if out is not None and is_remote(out):
        return _shard_tree_to_store(src_path, str(out), options, force, progress)
    out_path = Path(out) if out is not None else Path("shards") / src_path.resolve().name
    if src_path.exists() and out_path.resolve() == src_path.resolve():
        raise UserError(f"--out {out_path} is the source folder itself; choose another folder")
    check_creatable(out_path)
    exclude, notes = _exclude_out(src_path, out_path)
    tree = find_source(src_path, options.layout, exclude)
    splits = tree.splits
    source = str(src_path.resolve())
    with output_lock(out_path):  # one writer per output folder
        jobs = []
        for split in splits:  # check every output folder before writing anything
            folder = out_path / split.name if split.name else out_path
            fp = fingerprint(source, split, options)
            check_folder(folder)
            jobs.append((split, FolderOutput(folder), fp,
                         inspect_output(open_store(folder), fp, source, split, options, force)))
        sets = [write_shard_set(split, output, source, fp, state, options, force, progress)
                for split, output, fp, state in jobs]
    return _result(source, str(out_path), tree, notes, sets)


def _exclude_out(src: Path, out: Path) -> tuple[frozenset[str], list[str]]:
    """The output folder when it lies inside ``src`` (not read as source), and the line saying so."""
    if not src.is_dir():
        return frozenset(), []
    real_src, real_out = os.path.realpath(src), os.path.realpath(out)
    if os.path.commonpath([real_src, real_out]) != real_src:
        return frozenset(), []
    note = [f"not reading {out} as source: it is the output folder, inside {src}"] if out.exists() else []
    return frozenset({real_out}), note


def _result(source: str, out: str, tree: SourceTree, notes: list[str], sets: list[dict]) -> dict:
    skipped = tree.splits[0].skipped_folders
    return {"source": source, "out": out, "layout": tree.layout, "form": tree.form, "notes": notes + tree.notes,
            "skipped_folders": skipped, "sets": sets}


def _shard_tree_to_store(src_path: Path, out: str, options: ShardOptions, force: bool, progress: bool) -> dict:
    """``shard_tree`` with ``out`` = a store's URL, ``s3://bucket/prefix`` (see :mod:`dino_pipe.shards.remote`)."""
    import fcntl
    import shutil
    import tempfile

    from dino_pipe.shards.remote import RemoteOutput
    from dino_pipe.storage.cache import CacheSettings

    store = open_store(out)  # fails early (credentials, bucket, endpoint) before walking the tree
    tree = find_source(src_path, options.layout)
    splits = tree.splits
    source = str(src_path.resolve())
    staging_root = CacheSettings.resolve().folder / "staging"
    try:
        staging_root.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(staging_root)
        staging = Path(tempfile.mkdtemp(prefix="shard-", dir=staging_root))
        lock = open(staging / ".lock", "a")
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while this run lives (a kill -9 releases it)
    except OSError as e:
        raise UserError(
            f"cannot create the staging folder under {staging_root}: {e.strerror or e}; set DINO_PIPE_CACHE"
        ) from None
    try:
        jobs = []
        for split in splits:  # check every destination before writing anything
            remote = RemoteOutput(store.child(split.name) if split.name else store, staging / (split.name or "all"))
            fp = fingerprint(source, split, options)
            jobs.append((split, remote, fp, inspect_output(remote.store, fp, source, split, options, force)))
        sets = [write_shard_set(split, remote, source, fp, state, options, force, progress)
                for split, remote, fp, state in jobs]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.close()
    return _result(source, store.url, tree, [], sets)


def _remove_stale_staging(root: Path) -> None:
    """Delete staging folders of killed ``shard --out s3://`` runs (their lock is no longer held)."""
    import fcntl
    import shutil

    for d in root.glob("shard-*"):
        try:
            with open(d / ".lock", "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue  # a live run holds it
