"""The storage seam: storage imports nothing above it, the local store, ``open_store``'s scheme registry,
and a scheme registered by one line carrying ``shard --out``, the output check and the shard cache."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from test_layers import imports_of  # the walk over imports the layer test uses

from dino_pipe.errors import UserError
from dino_pipe.storage import store as store_module
from dino_pipe.storage.local import LocalStore
from dino_pipe.storage.store import Stat, Store, open_store

STORAGE = Path(__file__).resolve().parents[1] / "dino_pipe" / "storage"
# what storage may import: itself and the layer below every package
ALLOWED = ("dino_pipe.storage", "dino_pipe.errors", "dino_pipe.atomic", "dino_pipe.progress", "dino_pipe.config")


def test_storage_imports_nothing_above_it():
    seen = {}
    for path in sorted(STORAGE.glob("*.py")):
        is_pkg = path.stem == "__init__"
        module = "dino_pipe.storage" if is_pkg else f"dino_pipe.storage.{path.stem}"
        seen[path.name] = imports_of(module, is_pkg, path.read_text(encoding="utf-8"), known=set())
    assert "dino_pipe.storage.store" in seen["cache.py"], "the walk sees imports"
    bad = {f: sorted(m for m in mods if not m.startswith(ALLOWED)) for f, mods in seen.items()}
    assert not any(bad.values()), f"storage imports from a package above it: {bad}"


def test_the_import_walk_sees_imports_inside_functions():
    src = "def f():\n    from dino_pipe.shards.manifest import MANIFEST_NAME\n    from ..data import x\n"
    found = imports_of("dino_pipe.storage.cache", False, src, known=set())
    assert found == {"dino_pipe.shards.manifest", "dino_pipe.data"}


# ------------------------------------------------------------------------------ the local store


def test_local_store(tmp_path):
    store = open_store(tmp_path / "root")
    assert isinstance(store, LocalStore) and isinstance(store, Store) and store.url == str(tmp_path / "root")
    assert store.list() == ({}, []) and store.get_bytes("a") is None and store.stat("a") is None  # not there yet
    store.put_bytes("a.json", b'{"x": 1}')
    (tmp_path / "src.bin").write_bytes(b"y" * 3000)
    store.put_file("sub/b.bin", tmp_path / "src.bin", {"sha256": "ignored"})
    assert store.list() == ({"a.json": 8}, ["sub"]) and store.list("sub") == ({"b.bin": 3000}, [])
    assert store.stat("sub/b.bin") == Stat(3000) and store.child("sub").get_bytes("b.bin") == b"y" * 3000
    out = io.BytesIO(b"stale bytes first")
    assert store.download("sub/b.bin", out) == (3000, hashlib.sha256(b"y" * 3000).hexdigest())
    assert out.getvalue() == b"y" * 3000
    assert store.describe("sub/b.bin") == str(tmp_path / "root" / "sub" / "b.bin")
    store.delete(["a.json", "missing"])
    assert store.list() == ({}, ["sub"]) and not list((tmp_path / "root").rglob("*.tmp"))


def test_open_store_refuses_an_unknown_scheme_in_one_line():
    with pytest.raises(UserError) as e:
        open_store("gs://bucket/set")
    assert str(e.value) == "gs://bucket/set: only s3:// URLs are supported for remote shard sets (got gs://)"


def test_s3_store_has_every_method_of_the_protocol():
    from dino_pipe.storage.s3 import S3Store

    members = [m for m in vars(Store) if not m.startswith("_") and callable(getattr(Store, m))]
    assert "download" in members and all(callable(getattr(S3Store, m, None)) for m in members)


# ------------------------------------------------------------------------------ a scheme added by one line

OBJECTS: dict[str, tuple[bytes, dict[str, str]]] = {}


class MemoryStore:
    """A store in a dict: what a new scheme's module holds (``mem://root``)."""

    def __init__(self, root: str):
        self.root = root.strip("/")
        self.url = f"mem://{self.root}"

    def _key(self, key: str) -> str:
        return "/".join(p for p in (self.root, key) if p)

    def child(self, name: str) -> MemoryStore:
        return MemoryStore(self._key(name))

    def describe(self, key: str = "") -> str:
        return f"mem://{self._key(key)}" if key else self.url

    def list(self, folder: str = "") -> tuple[dict[str, int], list[str]]:
        prefix, files, dirs = self._key(folder) + "/", {}, set()
        for k, (data, _) in OBJECTS.items():
            if k.startswith(prefix):
                name, sep, _ = k[len(prefix):].partition("/")
                if sep:
                    dirs.add(name)
                else:
                    files[name] = len(data)
        return files, sorted(dirs)

    def stat(self, key: str) -> Stat | None:
        o = OBJECTS.get(self._key(key))
        return None if o is None else Stat(len(o[0]), dict(o[1]))

    def get_bytes(self, key: str) -> bytes | None:
        o = OBJECTS.get(self._key(key))
        return None if o is None else o[0]

    def download(self, key: str, out) -> tuple[int, str]:
        data = OBJECTS[self._key(key)][0]
        out.seek(0)
        out.truncate()
        out.write(data)
        return len(data), hashlib.sha256(data).hexdigest()

    def put_file(self, key: str, path, metadata: dict[str, str] | None = None) -> None:
        OBJECTS[self._key(key)] = (Path(path).read_bytes(), dict(metadata or {}))

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        OBJECTS[self._key(key)] = (bytes(data), dict(metadata or {}))

    def delete(self, keys: list[str]) -> None:
        for k in keys:
            OBJECTS.pop(self._key(k), None)


def open_mem(location: str) -> MemoryStore:
    return MemoryStore(location.split("://", 1)[1])


def test_a_scheme_registered_by_one_line_carries_shard_the_output_check_and_the_cache(
    image_tree, tmp_path, monkeypatch
):
    from dino_pipe.shards.fetch import fetch_shardset
    from dino_pipe.shards.writer import ShardOptions, shard_tree
    from dino_pipe.storage.cache import CacheSettings

    monkeypatch.setitem(store_module.SCHEMES, "mem", f"{__name__}:open_mem")  # the registration line
    monkeypatch.setenv("DINO_PIPE_CACHE", str(tmp_path / "cache"))
    OBJECTS.clear()
    opts = ShardOptions(shard_samples=8, workers=1)
    shard_tree(image_tree, tmp_path / "local", opts, progress=False)
    assert isinstance(open_store("mem://b/set"), Store)

    r = shard_tree(image_tree, "mem://b/set", opts, progress=False)
    assert r["out"] == "mem://b/set" and r["sets"][0]["status"] == "written"
    local = sorted(p for p in (tmp_path / "local").iterdir() if p.name.startswith("shard-"))
    assert len(local) == 10 and sorted(k for k in OBJECTS if "/shard-" in k) == [f"b/set/{p.name}" for p in local]
    assert all(OBJECTS[f"b/set/{p.name}"][0] == p.read_bytes() for p in local), "same bytes as a local run"
    local_manifest = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert json.loads(OBJECTS["b/set/manifest.json"][0]) == local_manifest
    assert not [k for k in OBJECTS if "journal" in k]
    assert shard_tree(image_tree, "mem://b/set", opts, progress=False)["sets"][0]["status"] == "up to date"

    OBJECTS["b/other/x.tar"] = (b"x", {})
    with pytest.raises(UserError, match=r"^mem://b/other already holds x.tar \(and 0 more tar/idx objects\) not"):
        shard_tree(image_tree, "mem://b/other", opts, progress=False)

    folder = fetch_shardset("mem://b/set", CacheSettings.resolve(str(tmp_path / "c"), gb=1.0))
    assert folder == tmp_path / "c" / "mem" / "b" / "set"
    assert all((folder / p.name).read_bytes() == p.read_bytes() for p in local)
    assert (folder / "manifest.json").read_bytes() == OBJECTS["b/set/manifest.json"][0]
