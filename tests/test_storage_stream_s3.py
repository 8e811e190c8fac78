"""Streaming from object storage, against the local S3 server (moto) of ``tests/test_storage_s3.py``:
two ranks train an epoch with the cache bounded to a fifth of the set (the cache folder, sampled during the
run, never goes over it), each rank GETs only its own shards, and kill -9 + resume while streaming gives the
weights of an uninterrupted streaming run bit for bit."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_minimal_shardset
from kill_helpers import kill_after_step
from PIL import Image
from test_data_streaming import FolderWatch
from test_storage_s3 import s3, server, upload  # noqa: F401  (fixtures)

from dino_pipe.atomic import read_jsonl
from dino_pipe.sample_data import photo_crops

SHARDS, PER_SHARD = 20, 4


@pytest.fixture(scope="module")
def stream_set(tmp_path_factory, photos) -> Path:
    """80 labelled JPEG crops in 20 shards of 4."""
    samples = []
    for i, a in enumerate(photo_crops(photos, SHARDS * PER_SHARD, seed=7)):
        buf = io.BytesIO()
        Image.fromarray(a).resize((48, 40)).save(buf, format="JPEG", quality=85)
        samples.append((f"s{i:05d}", buf.getvalue(), i % 4))
    return write_minimal_shardset(tmp_path_factory.mktemp("stream") / "set", samples, PER_SHARD,
                                  [f"c{c}" for c in range(4)])


def _set_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("shard-*.tar"))


def test_two_ranks_stream_an_epoch_within_a_fifth_of_the_set(s3, stream_set, tmp_path):  # noqa: F811
    from test_train_loop import tiny_cfg

    from dino_pipe.train.loop import train

    url = upload(s3, stream_set, "st/set")
    bound = _set_bytes(stream_set) // 5
    cfg = tiny_cfg("train.epochs=1", f"data.cache_gb={bound / 1e9}", "data.shuffle_buffer=8")  # read_mode auto
    with FolderWatch(tmp_path / "cache") as watch:
        s = train(cfg, url, tmp_path / "run", gpus=0, procs=2, progress=False)
    assert s["steps"] == (SHARDS * PER_SHARD // 2) // 4 == 10
    assert watch.samples > 20 and 0 < watch.peak <= bound, (watch.peak, bound)
    per_rank = s["stream"]["per_rank"]
    assert [r["rank"] for r in per_rank] == [0, 1]
    for r in per_rank:
        assert r["epochs"]["0"]["gets"] == SHARDS // 2, r  # its own half of the shards, one GET each
        assert r["cache_bound_bytes"] == bound // 2  # two processes on this node share the bound
    assert not (tmp_path / "cache" / "s3").exists(), "nothing was cached whole"
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["fetch_gets"] >= SHARDS // 2 and records[-1]["fetch_bytes"] > 0
    assert {"fetch_mb_per_s", "fetch_depth"} <= set(records[-1])


def test_auto_streams_only_a_set_larger_than_the_cache(s3, stream_set, tmp_path):  # noqa: F811
    from dino_pipe.shards.fetch import choose_read_mode
    from dino_pipe.storage.cache import CacheSettings

    url = upload(s3, stream_set, "mode/set")
    size = _set_bytes(stream_set)
    small, roomy = (CacheSettings.resolve(str(tmp_path), gb=f * size / 1e9) for f in (0.5, 2.0))
    assert choose_read_mode(url, "auto", small) == "stream" and choose_read_mode(url, "auto", roomy) == "cache"
    assert choose_read_mode(url, "cache", small) == "cache" and choose_read_mode(url, "stream", roomy) == "stream"
    assert choose_read_mode(stream_set, "auto", small) == "disk" and choose_read_mode(stream_set, "stream", roomy) \
        == "stream"


def test_each_rank_gets_only_its_own_shards(s3, stream_set, tmp_path, monkeypatch):  # noqa: F811
    from test_train_loop import tiny_cfg

    from dino_pipe.data.stream_loader import StreamViewLoader
    from dino_pipe.data.streaming import epoch_reads
    from dino_pipe.storage import s3 as s3_module

    url = upload(s3, stream_set, "own/set")
    gets: list[str] = []
    download = s3_module.S3Store.download

    def counted(self, key, out):
        gets.append(key)
        return download(self, key, out)

    monkeypatch.setattr(s3_module.S3Store, "download", counted)
    cfg = tiny_cfg("data.read_mode=stream", f"data.cache_gb={_set_bytes(stream_set) / 4 / 1e9}",
                   "data.stream_window=2")
    per_rank = []
    for rank in range(2):
        gets.clear()
        loader = StreamViewLoader(url, cfg.data, rank=rank, world_size=2, local_world_size=1)
        try:
            assert sum(1 for _ in loader) == 10
            names = loader.stream.stats.per_tag[0]["names"]
        finally:
            loader.close()
        reads = epoch_reads(loader.shards, seed=loader.seed, epoch=0, rank=rank, world_size=2, batch_size=4)
        assert sorted(names) == sorted(loader.shards.names[s] for s, _ in reads)  # (in the order downloads ended)
        assert sorted(gets[: len(names)]) == sorted(names), "the store saw exactly these GETs"
        assert all(k.endswith(".tar") for k in gets), "one GET per shard, no index or manifest GETs"
        per_rank.append(set(names))
    assert not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == {f"shard-{i:06d}.tar" for i in range(SHARDS)}


def test_kill9_and_resume_while_streaming_equals_an_uninterrupted_run(s3, stream_set, tmp_path):  # noqa: F811
    from test_train_loop import TINY

    from dino_pipe.train import load_checkpoint

    url = upload(s3, stream_set, "kill/set")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    bound = _set_bytes(stream_set) / 5

    def cli(run_dir):
        return [sys.executable, "-m", "dino_pipe", "train", "--data", url, "--out", str(run_dir), "--gpus", "0",
                "-q", *TINY, "train.epochs=2", "train.checkpoint_every_steps=3", "model.drop_path=0.1",
                "data.read_mode=stream", f"data.cache_gb={bound / 1e9}", "data.shuffle_buffer=10"]

    res = subprocess.run(cli(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    killed = tmp_path / "killed"
    kill_at = random.Random(os.getpid()).randint(4, 34)  # 40 steps over 2 epochs
    kill_after_step(cli(killed), env, killed, kill_at)
    assert load_checkpoint(killed)["step"] < 40
    res = subprocess.run(cli(killed), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(killed)
    assert a["step"] == b["step"] == 40
    for part in ("student", "teacher"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k} (killed at step {kill_at})"
    assert torch.equal(a["objective"]["dino.center"], b["objective"]["dino.center"])
