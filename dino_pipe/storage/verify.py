"""``dino-pipe verify s3://bucket/prefix``: fetch each set into the shard cache, then verify it there.

The fetch already checks every tar's sha256 against the manifest (a mismatch is one error line);
the local verifier then re-reads sample counts, the ``.idx`` files and decodes every image with
DALI. Reports name the ``s3://`` locations; tars in the store that the manifest does not list are
reported as ``extra_tars``.
"""

from __future__ import annotations

from dino_pipe.errors import UserError
from dino_pipe.shards.manifest import MANIFEST_NAME
from dino_pipe.storage.cache import fetch_shardset
from dino_pipe.storage.s3 import open_store
from dino_pipe.storage.url import parse_s3


def verify_remote(location: str, workers: int = 0, device: str = "auto", progress: bool = True) -> dict:
    from dino_pipe.progress import make_progress
    from dino_pipe.shards.options import default_workers
    from dino_pipe.shards.verify import cuda_available, verify_set

    url = parse_s3(location)
    if device not in ("auto", "cpu", "mixed", "gpu"):
        raise UserError(f"--device must be auto, cpu or gpu, got '{device}'")
    device = "mixed" if device in ("mixed", "gpu") or (device == "auto" and cuda_available()) else "cpu"
    if device == "mixed" and not cuda_available():
        raise UserError("--device gpu needs CUDA, and no GPU is visible; use --device cpu")
    store = open_store(url)
    files, dirs = store.list_folder(url)
    if MANIFEST_NAME in files:
        sets = [(url, files)]
    else:
        sets = []
        for d in sorted(dirs):
            sub_files, _ = store.list_folder(url.child(d))
            if MANIFEST_NAME in sub_files:
                sets.append((url.child(d), sub_files))
    if not sets:
        raise UserError(f"{url} holds no shard set (no {MANIFEST_NAME} there or one level below): check the URL")
    folders = [(u, names, fetch_shardset(str(u), progress=progress)) for u, names in sets]
    workers = workers or default_workers()
    reports = []
    with make_progress("img", disable=not progress) as bar:
        for u, names, folder in folders:
            r = verify_set(folder, workers, device, bar)
            listed = {p.name for p in folder.glob("*.tar")}
            r["extra_tars"] = sorted(n for n in names if n.endswith(".tar") and n not in listed)
            r["path"], r["cache"] = str(u), str(folder)
            reports.append(r)
    return {"path": str(url), "ok": all(r["ok"] for r in reports), "sets": reports}
