"""Shared test fixtures: small real-image trees and shard sets made on the spot (never downloaded)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_pipe.sample_data import photo_crops, shipped_photos  # noqa: F401  (photo_crops: used by tests)

os.environ.setdefault("OMP_NUM_THREADS", "2")

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    HAS_CUDA = False


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly without CUDA."""
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA (run by tools/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _photo_arrays() -> list[np.ndarray]:
    """The natural RGB photos that scikit-image and scikit-learn ship (no download)."""
    return list(shipped_photos().values())


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    return _photo_arrays()


def write_image_tree(
    root: Path, photos: list[np.ndarray], classes: int = 4, per_class: int = 10, seed: int = 0
) -> Path:
    """An ImageFolder tree ``root/<class>/<i>.jpg`` of photo crops; class c uses photos c, c+k, ..."""
    crops = photo_crops(photos, classes * per_class, seed=seed)
    for i, a in enumerate(crops):
        d = root / f"class_{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(d / f"img_{i:05d}.jpg", quality=90)
    return root


@pytest.fixture()
def image_tree(tmp_path, photos) -> Path:
    return write_image_tree(tmp_path / "tree", photos)


def write_minimal_shardset(
    out: Path, samples: list[tuple[str, bytes, int | None]], per_shard: int, classes: list[str]
) -> Path:
    """A shard set in the dino-pipe layout, written with webdataset's TarWriter + DALI's index format
    (``.idx`` written by dino-pipe's own index writer, which ``tests/test_shards_format.py`` checks
    against DALI's ``wds2idx``; no console script needed, so this works where DALI is installed with
    ``pip --target``).

    Layout (the contract between the shards and data packages): ``out/shard-000000.tar`` (+ ``.idx``),
    ... and ``out/manifest.json`` with ``num_samples``, ``classes`` and ``shards`` entries.
    """
    import hashlib

    import webdataset as wds

    from dino_pipe.shards.index import format_index, group_samples
    from dino_pipe.shards.tar import read_members

    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, len(samples), per_shard):
        name = f"shard-{s // per_shard:06d}.tar"
        with wds.TarWriter(str(out / name)) as w:
            for key, jpg, label in samples[s : s + per_shard]:
                rec = {"__key__": key, "jpg": jpg}
                if label is not None:
                    rec["cls"] = str(label).encode()
                w.write(rec)
        idx = name.replace(".tar", ".idx")
        with open(out / name, "rb") as f:
            (out / idx).write_text(format_index(group_samples(read_members(f, (out / name).stat().st_size))))
        data = (out / name).read_bytes()
        shards.append({"file": name, "index": idx, "samples": len(samples[s : s + per_shard]),
                       "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"format": "dino-pipe-shards", "version": 1, "num_samples": len(samples), "classes": classes,
                "labeled": samples[0][2] is not None, "shards": shards}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="session")
def tiny_shardset(tmp_path_factory, photos) -> Path:
    """96 labelled JPEG photo crops (~120x100 px), 4 classes, in 3 shards of 32."""
    crops = photo_crops(photos, 96, seed=1)
    samples = []
    for i, a in enumerate(crops):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=90)
        samples.append((f"s{i:05d}", buf.getvalue(), i % 4))
    return write_minimal_shardset(
        tmp_path_factory.mktemp("shards") / "tiny", samples, 32, [f"class_{c:02d}" for c in range(4)]
    )


@pytest.fixture()
def ckpt(tmp_path_factory):
    """A tiny checkpoint in a run folder of its own (see ``eval_helpers.write_tiny_checkpoint``)."""
    from eval_helpers import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture()
def tree(tmp_path, photos) -> Path:
    """An image tree of 2 classes x 4 photos under ``tmp_path/tree``."""
    return write_image_tree(tmp_path / "tree", photos, classes=2, per_class=4)
