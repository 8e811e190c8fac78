"""``dino-pipe shard --out s3://bucket/prefix``: the shard set written to an object store.

Shards are written exactly as for a local run (same bytes), into a local staging folder, and each
finished shard is uploaded at once and removed locally, so staging holds at most the shards in
flight (``2 x workers``). Per shard, in this order::

    PUT shard-NNNNNN.tar   (metadata: sha256)         one PUT = atomic: all or nothing
    PUT shard-NNNNNN.idx   (metadata: sha256)
    PUT .dino-pipe-shard-journal/shard-NNNNNN.json    the journal record: "this shard is finished"

then ``manifest.json`` last (the set is complete), then the journal objects are deleted. A rerun
with the same fingerprint keeps every journaled shard whose objects are present with the recorded
size and sha256 (a HEAD each) and writes the rest, from any machine. What is already there is
decided by :func:`~dino_pipe.shards.outdir.inspect_output`, as for a local folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from dino_pipe.shards.journal import HEADER, JOURNAL_DIR
from dino_pipe.shards.manifest import MANIFEST_NAME
from dino_pipe.storage.store import Store


class RemoteOutput:
    """One shard set's destination ``store``, with the local ``folder`` the workers write into (staging)."""

    def __init__(self, store: Store, folder: Path):
        self.store, self.folder = store, folder
        self.shown = store.url

    def start(self, header: dict, force: bool) -> None:
        """With ``force``, delete the previous set's objects; then (re)write the journal header."""
        if force:
            files, _ = self.store.list()
            names, _ = self.store.list(JOURNAL_DIR)
            doomed = [n for n in files if n.endswith((".tar", ".idx")) or n == MANIFEST_NAME]
            self.store.delete(doomed + [f"{JOURNAL_DIR}/{n}" for n in names])
        self.store.put_bytes(f"{JOURNAL_DIR}/{HEADER}", json.dumps(header).encode())

    def intact(self, record: dict) -> bool:
        """A journaled shard is kept when both objects are there with the recorded size and sha256."""
        if not record.get("samples"):
            return True
        tar, idx = self.store.stat(record["file"]), self.store.stat(record["index"])
        return (tar is not None and idx is not None and tar.size == record["bytes"]
                and tar.metadata.get("sha256") == record["sha256"]
                and idx.metadata.get("sha256") == record["index_sha256"])

    def publish(self, record: dict) -> None:
        """Upload a finished shard from staging (tar, idx, then its journal record); free staging."""
        if record.get("samples"):
            for name, sha in ((record["file"], record["sha256"]), (record["index"], record["index_sha256"])):
                self.store.put_file(name, self.folder / name, {"sha256": sha})
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.folder / name)
        self.store.put_bytes(f"{JOURNAL_DIR}/shard-{record['shard']:06d}.json", json.dumps(record).encode())

    def wait(self) -> None:
        """Each shard was uploaded by :meth:`publish`."""

    def finish(self, manifest: dict) -> None:
        """Manifest last (the set is complete), then the journal goes."""
        self.store.put_bytes(MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
        names, _ = self.store.list(JOURNAL_DIR)
        self.store.delete([f"{JOURNAL_DIR}/{n}" for n in names])
