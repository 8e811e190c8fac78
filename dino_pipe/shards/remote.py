"""``dino-pipe shard --out s3://bucket/prefix``: the shard set written to an object store.

Shards are written exactly as for a local run (same bytes), into a local staging folder, and each
finished shard is uploaded at once and removed locally, so staging holds at most the shards in
flight (``2 x workers``). Per shard, in this order::

    PUT shard-NNNNNN.tar   (metadata: sha256)         one PUT = atomic: all or nothing
    PUT shard-NNNNNN.idx   (metadata: sha256)
    PUT .dino-pipe-shard-journal/shard-NNNNNN.json    the journal record: "this shard is finished"

then ``manifest.json`` last (the set is complete), then the journal objects are deleted. A rerun
with the same fingerprint keeps every journaled shard whose objects are present with the recorded
size and sha256 (a HEAD each) and writes the rest, from any machine.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from dino_pipe.errors import UserError
from dino_pipe.shards.layout import SourceSplit
from dino_pipe.shards.manifest import MANIFEST_NAME
from dino_pipe.shards.outdir import OutputState, _describe_difference
from dino_pipe.storage.s3 import S3Store
from dino_pipe.storage.url import S3Url

JOURNAL_DIR = ".dino-pipe-shard-journal"
HEADER = "header.json"


class RemoteOutput:
    """One shard set's destination in the store, with its local staging folder."""

    def __init__(self, store: S3Store, url: S3Url, staging: Path):
        self.store, self.url, self.staging = store, url, staging
        self.journal = url.child(JOURNAL_DIR)

    def _json(self, key: str) -> dict | None:
        raw = self.store.get_bytes(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {}

    def inspect(self, fp: str, source: str, split: SourceSplit, options, force: bool) -> OutputState:
        """What to do with what is already at the URL (same rules as a local folder); changes nothing."""
        files, dirs = self.store.list_folder(self.url)
        header = self._json(self.journal.key(HEADER)) if JOURNAL_DIR in dirs else None
        if header and header.get("fingerprint") == fp and not force:
            names, _ = self.store.list_folder(self.journal)
            records = [self._json(self.journal.key(n)) for n in sorted(names) if n.startswith("shard-")]
            return OutputState("resume", [r for r in records if r and "shard" in r])
        old = (self._json(self.url.key(MANIFEST_NAME)) or {}) if MANIFEST_NAME in files else None
        if force:
            return OutputState("fresh", [])
        if old is not None:
            if old.get("fingerprint") == fp and header is None:
                complete = all(
                    files.get(s["file"]) == s["bytes"] and s["index"] in files for s in old.get("shards", [])
                )
                return OutputState("up_to_date" if complete else "fresh", [], old)
            why = _describe_difference(old, source, split, options) if old else "its manifest.json is unreadable"
            raise UserError(
                f"{self.url} already holds a different shard set ({why}); "
                "use --force to replace it or choose another --out"
            )
        if header is not None:
            why = _describe_difference(header, source, split, options)
            raise UserError(
                f"{self.url} holds an unfinished shard set of a different run ({why}); "
                "use --force to replace it or choose another --out"
            )
        foreign = sorted(n for n in files if n.endswith((".tar", ".idx")))
        if foreign:
            raise UserError(
                f"{self.url} already holds {foreign[0]} (and {len(foreign) - 1} more tar/idx objects) "
                "not written by this run; "
                "use --force to replace them or choose another --out"
            )
        return OutputState("fresh", [])

    def start(self, header: dict, force: bool) -> None:
        """With ``force``, delete the previous set's objects; then (re)write the journal header."""
        if force:
            files, _ = self.store.list_folder(self.url)
            names, _ = self.store.list_folder(self.journal)
            doomed = [self.url.key(n) for n in files if n.endswith((".tar", ".idx")) or n == MANIFEST_NAME]
            self.store.delete(doomed + [self.journal.key(n) for n in names])
        self.store.put_bytes(self.journal.key(HEADER), json.dumps(header).encode())

    def intact(self, record: dict) -> bool:
        """A journaled shard is kept when both objects are there with the recorded size and sha256."""
        if not record.get("samples"):
            return True
        tar, idx = self.store.head(self.url.key(record["file"])), self.store.head(self.url.key(record["index"]))
        return (tar is not None and idx is not None and tar["size"] == record["bytes"]
                and tar["metadata"].get("sha256") == record["sha256"]
                and idx["metadata"].get("sha256") == record["index_sha256"])

    def publish(self, record: dict) -> None:
        """Upload a finished shard from staging (tar, idx, then its journal record); free staging."""
        if record.get("samples"):
            for name, sha in ((record["file"], record["sha256"]), (record["index"], record["index_sha256"])):
                self.store.put_file(self.url.key(name), self.staging / name, {"sha256": sha})
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.staging / name)
        self.store.put_bytes(self.journal.key(f"shard-{record['shard']:06d}.json"), json.dumps(record).encode())

    def finish(self, manifest: dict) -> None:
        """Manifest last (the set is complete), then the journal goes."""
        self.store.put_bytes(self.url.key(MANIFEST_NAME), (json.dumps(manifest, indent=2) + "\n").encode())
        names, _ = self.store.list_folder(self.journal)
        self.store.delete([self.journal.key(n) for n in names])
