"""``dino-pipe verify s3://bucket/prefix``: fetch each set into the shard cache, then verify it there.

The fetch already checks every tar's sha256 against the manifest (a mismatch is one error line);
the local verifier then re-reads sample counts, the ``.idx`` files and decodes every image with
DALI. Reports name the store's locations; tars in the store that the manifest does not list are
reported as ``extra_tars``.
"""

from __future__ import annotations

from dino_pipe.errors import UserError
from dino_pipe.shards.fetch import fetch_shardset
from dino_pipe.shards.manifest import MANIFEST_NAME
from dino_pipe.storage.store import open_store


def verify_remote(location: str, workers: int = 0, device: str = "auto", progress: bool = True) -> dict:
    """Verify the shard set at ``location`` (or each set one level below it), like a local verify."""
    from dino_pipe.progress import make_progress
    from dino_pipe.shards.options import default_workers
    from dino_pipe.shards.verify import decoder_for, verify_set

    decoder = decoder_for(device)
    store = open_store(location)
    files, dirs = store.list()
    if MANIFEST_NAME in files:
        sets = [(store, files)]
    else:
        sets = []
        for d in sorted(dirs):
            sub_files, _ = store.list(d)
            if MANIFEST_NAME in sub_files:
                sets.append((store.child(d), sub_files))
    if not sets:
        raise UserError(f"{store.url} holds no shard set (no {MANIFEST_NAME} there or one level below): check the URL")
    folders = [(s, names, fetch_shardset(s.url, progress=progress)) for s, names in sets]
    workers = workers or default_workers()
    reports = []
    with make_progress("img", disable=not progress) as bar:
        for s, names, folder in folders:
            r = verify_set(folder, workers, decoder, bar)
            listed = {p.name for p in folder.glob("*.tar")}
            r["extra_tars"] = sorted(n for n in names if n.endswith(".tar") and n not in listed)
            r["path"], r["cache"] = s.url, str(folder)
            reports.append(r)
    return {"path": store.url, "ok": all(r["ok"] for r in reports), "sets": reports}
