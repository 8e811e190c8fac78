"""ViewLoader / EvalLoader: shapes, labels, sharding, epochs, determinism, exact resume (CPU graph)."""

from __future__ import annotations

import io
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import photo_crops, write_minimal_shardset
from PIL import Image

from dino_pipe.config import DataConfig
from dino_pipe.data.loader import EvalLoader, ViewLoader

SMALL = dict(global_size=48, local_size=24, batch_size=8)


def shard_contents(root) -> list[tuple[bytes, int | None]]:
    """``(jpeg bytes, label)`` per sample in shard-set order, read straight from the tars."""
    out = []
    for tar in sorted(root.glob("shard-*.tar")):
        with tarfile.open(tar) as t:
            members = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
        keys = sorted({n.split(".", 1)[0] for n in members})
        for k in keys:
            cls = members.get(f"{k}.cls")
            out.append((members[f"{k}.jpg"], int(cls) if cls is not None else None))
    return out


@pytest.mark.parametrize("n_local", [0, 2, 10])
def test_views_shapes_dtypes_and_count(tiny_shardset, n_local):
    cfg = DataConfig(n_local=n_local, **SMALL)
    loader = ViewLoader(tiny_shardset, cfg)
    batch = next(iter(loader))
    assert len(batch.views) == 2 + n_local
    for v in batch.views[:2]:
        assert v.shape == (8, 3, 48, 48) and v.dtype == torch.float32
    for v in batch.views[2:]:
        assert v.shape == (8, 3, 24, 24) and v.dtype == torch.float32
    assert batch.labels.shape == (8,) and batch.labels.dtype == torch.int64
    assert len(loader) == 96 // 8 and loader.num_samples == 96 and loader.num_classes == 4
    # normalized: roughly zero-centred, unit-ish spread, not constant
    allv = torch.cat([v.flatten() for v in batch.views])
    assert -1.5 < allv.mean() < 1.5 and 0.3 < allv.std() < 2.0


def test_labels_match_shard_contents(tiny_shardset):
    truth = [lab for _, lab in shard_contents(tiny_shardset)]
    loader = ViewLoader(tiny_shardset, DataConfig(n_local=0, **SMALL), debug=True)
    seen = 0
    for batch in loader:
        assert batch.labels.tolist() == [truth[i] for i in batch.indices.tolist()]
        seen += len(batch.labels)
    assert seen == 96


def test_epochs_cover_each_sample_once_across_two_ranks(tiny_shardset):
    cfg = DataConfig(n_local=0, **SMALL)
    ranks = [ViewLoader(tiny_shardset, cfg, rank=r, world_size=2, debug=True, seed=3) for r in range(2)]
    assert [len(r) for r in ranks] == [6, 6]
    orders = []
    for epoch in range(2):
        per_rank = [torch.cat([b.indices for b in r]).tolist() for r in ranks]
        assert all(r.epoch == epoch + 1 for r in ranks)
        assert set(per_rank[0]).isdisjoint(per_rank[1])
        both = per_rank[0] + per_rank[1]
        assert sorted(both) == list(range(96)), "every sample exactly once per epoch"
        orders.append(per_rank[0])
    assert orders[0] != sorted(orders[0]), "shuffled within the epoch"
    assert orders[0] != orders[1], "reshuffled / rotated between epochs"


def test_partial_batches_dropped_same_count_on_every_rank(tiny_shardset):
    cfg = DataConfig(n_local=0, **{**SMALL, "batch_size": 10})
    ranks = [ViewLoader(tiny_shardset, cfg, rank=r, world_size=3, debug=True) for r in range(3)]
    assert [len(r) for r in ranks] == [3, 3, 3]  # 32 samples per rank -> 3 whole batches of 10
    for _epoch in range(2):
        got = [[b.indices for b in r] for r in ranks]
        assert [len(g) for g in got] == [3, 3, 3]
        flat = torch.cat([torch.cat(g) for g in got]).tolist()
        assert len(flat) == len(set(flat)) == 90  # no duplicates, no padding samples


def test_same_seed_same_batches_other_seed_or_rank_differs(tiny_shardset):
    cfg = DataConfig(n_local=2, **SMALL)

    def first_two(**kw):
        it = iter(ViewLoader(tiny_shardset, cfg, debug=True, **kw))
        return [next(it) for _ in range(2)]

    a, b = first_two(seed=7), first_two(seed=7)
    for x, y in zip(a, b):
        assert all(torch.equal(u, v) for u, v in zip(x.views, y.views))
        assert torch.equal(x.indices, y.indices)
    c = first_two(seed=8)
    assert not torch.equal(a[0].views[0], c[0].views[0])
    r0 = first_two(seed=7, rank=0, world_size=2)
    r1 = first_two(seed=7, rank=1, world_size=2)
    assert set(r0[0].indices.tolist()).isdisjoint(r1[0].indices.tolist())


def _take(loader, n):
    out = []
    while len(out) < n:
        for b in loader:
            out.append(b)
            if len(out) == n:
                break
    return out


@pytest.mark.parametrize("how", ["checkpoint", "replay"])
def test_resume_mid_epoch_gives_exactly_the_next_batches(tiny_shardset, tmp_path, how):
    cfg = DataConfig(n_local=2, **{**SMALL, "batch_size": 16})  # 6 steps per epoch
    a = ViewLoader(tiny_shardset, cfg, seed=11, debug=True)
    _take(a, 4)  # stop mid-epoch 0
    state = a.state_dict()
    torch.save(state, tmp_path / "loader.pt")
    state = torch.load(tmp_path / "loader.pt", weights_only=True)
    assert state["epoch"] == 0 and state["step"] == 4 and isinstance(state["dali_checkpoint"], bytes)
    expected = _take(a, 2 + 6 + 3)  # rest of epoch 0, all of epoch 1, part of epoch 2
    if how == "replay":
        state = {**state, "dali_checkpoint": b""}
    b = ViewLoader(tiny_shardset, cfg, seed=11, debug=True)
    b.load_state_dict(state)
    assert b.epoch == 0
    got = _take(b, len(expected))
    for x, y in zip(expected, got):
        assert torch.equal(x.indices, y.indices)
        assert torch.equal(x.labels, y.labels)
        assert all(torch.equal(u, v) for u, v in zip(x.views, y.views))
    assert b.epoch == a.epoch == 2


def test_unlabeled_set(tmp_path, photos):
    crops = photo_crops(photos, 16, seed=5, size=(64, 56))
    samples = []
    for i, arr in enumerate(crops):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        samples.append((f"u{i:04d}", buf.getvalue(), None))
    root = write_minimal_shardset(tmp_path / "unlab", samples, 8, [])
    loader = ViewLoader(root, DataConfig(n_local=1, **SMALL))
    batch = next(iter(loader))
    assert batch.labels is None and len(batch.views) == 3 and loader.num_classes == 0
    ev = EvalLoader(root, DataConfig(eval_resize=40, eval_crop=32), batch_size=5)
    got = list(ev)
    assert [len(x[2]) for x in got] == [5, 5, 5, 1]
    assert all((x[1] == -1).all() for x in got)
    assert torch.cat([x[2] for x in got]).tolist() == list(range(16))


@pytest.mark.parametrize("world_size,batch_size", [(2, 16), (3, 10)])
def test_eval_each_sample_exactly_once_across_ranks(tiny_shardset, world_size, batch_size):
    truth = [lab for _, lab in shard_contents(tiny_shardset)]
    cfg = DataConfig(eval_resize=40, eval_crop=32)
    seen = []
    for r in range(world_size):
        ev = EvalLoader(tiny_shardset, cfg, rank=r, world_size=world_size, batch_size=batch_size)
        batches = list(ev)
        assert len(batches) == len(ev)
        for images, labels, indices in batches:
            assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
            assert labels.tolist() == [truth[i] for i in indices.tolist()]
            seen += indices.tolist()
        again = torch.cat([b[2] for b in ev])
        assert again.tolist() == torch.cat([b[2] for b in batches]).tolist(), "same order every pass"
    assert Counter(seen) == Counter(range(96)), "every sample exactly once, no padding duplicates"


def test_eval_matches_resize_center_crop_normalize(tiny_shardset):
    """The eval image equals PIL bicubic shorter-side resize + centre crop + normalize (to resampling error)."""
    cfg = DataConfig(eval_resize=40, eval_crop=32)
    contents = shard_contents(tiny_shardset)
    images, _, indices = next(iter(EvalLoader(tiny_shardset, cfg, batch_size=8)))
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    for img, idx in zip(images, indices.tolist()):
        pil = Image.open(io.BytesIO(contents[idx][0])).convert("RGB")
        w, h = pil.size
        s = 40 / min(w, h)
        pil = pil.resize((max(40, round(w * s)), max(40, round(h * s))), Image.BICUBIC)
        w, h = pil.size
        left, top = round((w - 32) / 2), round((h - 32) / 2)
        ref = torch.from_numpy(np.asarray(pil.crop((left, top, left + 32, top + 32)), dtype=np.float32) / 255)
        ref = (ref.permute(2, 0, 1) - mean) / std
        diff = (img - ref).abs() * std * 255  # in grey levels
        assert diff.mean() < 4.0, f"sample {idx}: mean |diff| {diff.mean():.2f} grey levels"
