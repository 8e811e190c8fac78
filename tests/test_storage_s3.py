"""Shard sets on object storage, against a local S3 server (moto, 127.0.0.1) started here.

shard -> S3 (same bytes as local, resumable), verify on S3 (sha256 mismatch refused), train one epoch
from S3 = from local disk bit for bit, kill -9 + resume from S3, eval k-NN from S3, and the one-line
errors: unknown bucket / key, unreachable endpoint, missing and wrong credentials, URLs where only
local paths are taken.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from kill_helpers import kill_after_step
from s3_server import MotoServer, free_port
from typer.testing import CliRunner

from dino_pipe.errors import UserError


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("boto3", reason="boto3 is not installed (pip install 'dino-pipe[s3]')")
    s = MotoServer()
    yield s
    s.stop()


@pytest.fixture()
def s3(server, monkeypatch, tmp_path):
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("DINO_PIPE_CACHE", str(tmp_path / "cache"))
    from dino_pipe.storage import s3 as s3_module

    monkeypatch.setattr(s3_module, "_buckets", {})
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return SimpleNamespace(client=client, bucket=bucket, server=server)


def keys(s3, prefix: str = "") -> dict[str, int]:
    r = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for o in r.get("Contents", [])}


def get(s3, key: str) -> bytes:
    return s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()


def upload(s3, folder: Path, prefix: str) -> str:
    """Copy a local shard set to the bucket as plain objects (what `aws s3 sync` would do)."""
    for p in sorted(folder.iterdir()):
        if p.is_file():
            s3.client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{p.name}", Body=p.read_bytes())
    return f"s3://{s3.bucket}/{prefix}"


def invoke(args: list) -> tuple[int, str]:
    from dino_pipe.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def assert_one_error_line(code: int, text: str, needle: str) -> None:
    assert code == 2, text
    assert needle in text, text
    assert "Traceback" not in text and text.strip().count("\n") == 0 and text.startswith("error:"), text


# ------------------------------------------------------------------------------ shard / verify


def test_shard_to_s3_same_bytes_as_local_resumable_and_up_to_date(s3, image_tree, tmp_path, monkeypatch):
    from dino_pipe.shards import remote
    from dino_pipe.shards.writer import ShardOptions, shard_tree

    opts = ShardOptions(shard_samples=8, workers=1)
    shard_tree(image_tree, tmp_path / "local", opts, progress=False)
    url = f"s3://{s3.bucket}/sets/tiny"

    publish, calls = remote.RemoteOutput.publish, []

    def drop_on_third(self, record):
        calls.append(record["shard"])
        if len(calls) == 3:
            raise UserError("connection dropped (test)")
        publish(self, record)

    monkeypatch.setattr(remote.RemoteOutput, "publish", drop_on_third)
    with pytest.raises(UserError, match="connection dropped"):
        shard_tree(image_tree, url, opts, progress=False)
    assert "sets/tiny/manifest.json" not in keys(s3), "an interrupted run must not declare the set complete"
    monkeypatch.setattr(remote.RemoteOutput, "publish", publish)

    r = shard_tree(image_tree, url, opts, progress=False)
    assert r["out"] == url and r["sets"][0]["resumed_shards"] == 2 and r["sets"][0]["status"].startswith("resumed")
    stored = keys(s3, "sets/tiny/")
    assert not [k for k in stored if ".dino-pipe-shard-journal" in k], "the journal goes once the manifest is written"
    local = sorted(p for p in (tmp_path / "local").iterdir() if p.name.startswith("shard-"))
    assert len(local) == 10 and sorted(Path(k).name for k in stored if "/shard-" in k) == [p.name for p in local]
    for p in local:
        assert get(s3, f"sets/tiny/{p.name}") == p.read_bytes(), p.name
    assert json.loads(get(s3, "sets/tiny/manifest.json")) == json.loads(
        (tmp_path / "local" / "manifest.json").read_text()
    )
    assert not any((tmp_path / "cache" / "staging").rglob("*.tar")), "staging is emptied"
    assert shard_tree(image_tree, url, opts, progress=False)["sets"][0]["status"] == "up to date"


def test_verify_on_s3_and_a_corrupted_shard_is_refused(s3, tiny_shardset, tmp_path, monkeypatch):
    url = upload(s3, tiny_shardset, "v/tiny")
    code, text = invoke(["verify", url, "-q", "--device", "cpu"])
    assert code == 0 and "ok" in text and url in text, text
    code, text = invoke(["verify", f"s3://{s3.bucket}/v", "-q", "--device", "cpu"])  # a parent of sets
    assert code == 0 and "tiny" in text, text

    data = bytearray(get(s3, "v/tiny/shard-000001.tar"))
    data[700] ^= 0xFF  # same size, one byte changed
    s3.client.put_object(Bucket=s3.bucket, Key="v/tiny/shard-000001.tar", Body=bytes(data))
    monkeypatch.setenv("DINO_PIPE_CACHE", str(tmp_path / "cold-cache"))
    code, text = invoke(["verify", url, "-q", "--device", "cpu"])
    assert_one_error_line(code, text, "shard-000001.tar in the store does not match its sha256")
    cached = tmp_path / "cold-cache" / "s3" / s3.bucket / "v" / "tiny"
    assert not (cached / "shard-000001.tar").exists() and not (cached / "manifest.json").exists()


# ------------------------------------------------------------------------------ train / eval


def test_train_one_epoch_from_s3_equals_local_bit_for_bit(s3, tiny_shardset, tmp_path):
    from test_train_loop import tiny_cfg

    from dino_pipe.train import load_checkpoint
    from dino_pipe.train.loop import train

    url = upload(s3, tiny_shardset, "t/tiny")
    base = ("train.epochs=1", "data.batch_size=16", "model.drop_path=0.1")
    a = train(tiny_cfg(*base), tiny_shardset, tmp_path / "local", gpus=0, progress=False)
    b = train(tiny_cfg(*base), url, tmp_path / "s3", gpus=0, progress=False)
    assert a["steps"] == b["steps"] == 6
    ca, cb = load_checkpoint(tmp_path / "local"), load_checkpoint(tmp_path / "s3")
    for part in ("student", "teacher"):
        for k, v in ca[part].items():
            assert torch.equal(v, cb[part][k]), f"{part}.{k}"
    assert torch.equal(ca["objective"]["dino.center"], cb["objective"]["dino.center"])


@pytest.mark.slow
def test_kill9_and_resume_training_from_s3(s3, tiny_shardset, tmp_path):
    from test_train_loop import TINY

    from dino_pipe.train import load_checkpoint

    url = upload(s3, tiny_shardset, "k/tiny")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}

    def cli(data, run_dir):
        return [
            sys.executable,
            "-m",
            "dino_pipe",
            "train",
            "--data",
            str(data),
            "--out",
            str(run_dir),
            "--gpus",
            "0",
            "-q",
            *TINY,
            "train.epochs=1",
            "train.checkpoint_every_steps=2",
            "model.drop_path=0.1",
        ]

    subprocess.run(cli(tiny_shardset, tmp_path / "full"), check=True, env=env, capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    kill_at = random.Random(os.getpid()).randint(5, 17)  # 24 steps
    kill_after_step(cli(url, killed), env, killed, kill_at)
    assert load_checkpoint(killed)["step"] < 24
    res = subprocess.run(cli(url, killed), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(killed)
    assert a["step"] == b["step"] == 24
    for part in ("student", "teacher"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k}"


def test_eval_knn_from_s3_equals_local(s3, tiny_shardset, tmp_path):
    from eval_helpers import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "run")
    url = upload(s3, tiny_shardset, "e/tiny")
    results = []
    for data, name in ((tiny_shardset, "local"), (url, "s3")):
        code, text = invoke(["eval", "knn", "--checkpoint", ckpt, "--train", data, "--val", data, "--gpus", "0",
                             "--k", 5, "--resize", 40, "--crop", 32, "--json", tmp_path / f"{name}.json"])
        assert code == 0, text
        results.append(json.loads((tmp_path / f"{name}.json").read_text())["results"])
    assert results[0] == results[1]


# ------------------------------------------------------------------------------ errors


def test_each_store_error_is_one_line(s3, tmp_path, monkeypatch, tiny_shardset, image_tree):
    url = upload(s3, tiny_shardset, "err/tiny")
    run = tmp_path / "run"
    code, text = invoke(["verify", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x", "-q"])
    assert_one_error_line(code, text, "does not exist")
    code, text = invoke(["train", "--data", f"s3://{s3.bucket}/err/nothing", "--out", run, "--gpus", "0", "-q"])
    assert_one_error_line(code, text, "has no manifest.json")
    code, text = invoke(["shard", image_tree, "--out", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/set", "-q"])
    assert_one_error_line(code, text, "does not exist")

    with monkeypatch.context() as m:
        m.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        code, text = invoke(["train", "--data", url, "--out", run, "--gpus", "0", "-q"])
        assert_one_error_line(code, text, "cannot reach the S3 endpoint")
    with monkeypatch.context() as m:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            m.delenv(k, raising=False)
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        m.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        code, text = invoke(["verify", url, "-q"])
        assert_one_error_line(code, text, "no S3 credentials found")
    assert not run.exists() and not (tmp_path / "cache" / "s3").exists(), "nothing fetched or written on failure"


def test_wrong_credentials_are_one_line(monkeypatch, tmp_path):
    pytest.importorskip("boto3", reason="boto3 is not installed (pip install 'dino-pipe[s3]')")
    strict = MotoServer(auth=True)  # checks signatures: any key is unknown to it
    try:
        for k, v in strict.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("DINO_PIPE_CACHE", str(tmp_path / "cache"))
        code, text = invoke(["verify", "s3://some-bucket/set", "-q"])
        assert_one_error_line(code, text, "refused the credentials")
    finally:
        strict.stop()


def test_urls_are_refused_where_only_local_paths_are_taken(tmp_path, monkeypatch, tiny_shardset):
    monkeypatch.chdir(tmp_path)
    code, text = invoke(["train", "--data", tiny_shardset, "--out", "s3://bucket/run", "--gpus", "0", "-q"])
    assert_one_error_line(code, text, "output s3://bucket/run: s3:// locations are not supported here")
    code, text = invoke(["shard", "s3://bucket/images", "--out", tmp_path / "x", "-q"])
    assert_one_error_line(code, text, "s3:// locations are not supported here")
    code, text = invoke(["verify", "gs://bucket/set", "-q"])
    assert_one_error_line(code, text, "only s3:// URLs are supported")
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "gs:").exists()


def test_a_dropped_download_is_retried_then_one_line(s3, monkeypatch):
    import botocore.exceptions as bx

    from dino_pipe.storage import s3 as s3_module
    from dino_pipe.storage.store import open_store

    monkeypatch.setattr(s3_module.time, "sleep", lambda s: None)
    s3.client.put_object(Bucket=s3.bucket, Key="d/obj", Body=b"x" * 5000)
    store = open_store(f"s3://{s3.bucket}/d")
    real, fails = store.client.get_object, [2]

    def flaky(**kw):
        if fails[0] > 0:
            fails[0] -= 1
            raise bx.ConnectionClosedError(endpoint_url=s3.server.endpoint)
        return real(**kw)

    monkeypatch.setattr(store.client, "get_object", flaky)
    import hashlib
    import io

    buf = io.BytesIO()
    assert store.download("obj", buf) == (5000, hashlib.sha256(b"x" * 5000).hexdigest()) and fails == [0]
    fails[0] = 100
    with pytest.raises(UserError, match="lost the connection to the S3 endpoint .* while reading s3://.*/d/obj"):
        store.download("obj", io.BytesIO())


# ------------------------------------------------------------------------------ the cache


def test_cache_is_bounded_lru_and_refetches_only_changed_shards(s3, tiny_shardset, tmp_path, monkeypatch):
    from dino_pipe.shards.fetch import fetch_shardset
    from dino_pipe.storage.cache import CacheSettings

    a, b = upload(s3, tiny_shardset, "c/a"), upload(s3, tiny_shardset, "c/b")
    size = sum(p.stat().st_size for p in tiny_shardset.iterdir() if p.is_file())
    roomy = CacheSettings.resolve(str(tmp_path / "c1"), gb=1.0)
    fa = fetch_shardset(a, roomy)
    assert sorted(p.name for p in fa.glob("shard-*.tar")) == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    before = {p.name: p.stat().st_mtime_ns for p in fa.glob("shard-*")}
    assert fetch_shardset(a, roomy) == fa and {p.name: p.stat().st_mtime_ns for p in fa.glob("shard-*")} == before

    one_set = CacheSettings.resolve(str(tmp_path / "c1"), gb=1.5 * size / 1e9)  # room for one set, not two
    fb = fetch_shardset(b, one_set)
    assert not list(fa.glob("shard-*.tar")) and len(list(fb.glob("shard-*.tar"))) == 3, (
        "the least recently used set goes"
    )
    tiny = CacheSettings.resolve(str(tmp_path / "c2"), gb=0.5 * size / 1e9)
    with pytest.raises(UserError, match="more than the shard cache may hold .* raise data.cache_gb"):
        fetch_shardset(a, tiny)


def test_bench_loader_reads_s3(s3, tiny_shardset):
    url = upload(s3, tiny_shardset, "bl/tiny")
    code, text = invoke(["bench", "loader", url, "--steps", 1, "--warmup", 0, "--batch-size", 8, "--n-local", 2,
                         "--global-size", 32, "--local-size", 16])
    assert code == 0 and "images/s" in text, text


def test_stale_staging_of_a_killed_shard_run_is_removed(s3, image_tree, tmp_path):
    from dino_pipe.shards.writer import ShardOptions, shard_tree

    stale = tmp_path / "cache" / "staging" / "shard-killed"
    stale.mkdir(parents=True)
    (stale / "shard-000000.tar").write_bytes(b"partial")
    shard_tree(image_tree, f"s3://{s3.bucket}/st", ShardOptions(shard_samples=20, workers=1), progress=False)
    assert not stale.exists() and not list((tmp_path / "cache" / "staging").iterdir())


def test_shard_verify_train_eval_end_to_end_on_s3(s3, image_tree, tmp_path):
    """The whole line through the CLI with every shard set on the store."""
    from test_train_loop import TINY

    url = f"s3://{s3.bucket}/e2e/tiny"
    code, text = invoke(["shard", image_tree, "--out", url, "--shard-samples", 16, "--workers", 1, "-q"])
    assert code == 0 and url in text, text
    code, text = invoke(["verify", url, "-q", "--device", "cpu"])
    assert code == 0 and "ok" in text, text
    run = tmp_path / "run"
    code, text = invoke(["train", "--data", url, "--out", run, "--gpus", "0", "-q", *TINY, "data.batch_size=8",
                         "train.epochs=1"])
    assert code == 0, text
    code, text = invoke(["eval", "knn", "--checkpoint", run, "--train", url, "--val", url, "--gpus", "0", "--k", 5,
                         "--resize", 40, "--crop", 32, "--json", tmp_path / "knn.json"])
    assert code == 0 and json.loads((tmp_path / "knn.json").read_text())["results"][0]["k"] == 5, text
    code, text = invoke(
        [
            "eval",
            "linear",
            "--checkpoint",
            run,
            "--train",
            url,
            "--val",
            url,
            "--out",
            tmp_path / "lin",
            "--gpus",
            "0",
            "--epochs",
            1,
            "--batch-size",
            8,
            "--resize",
            40,
            "--crop",
            32,
            "--n-last-blocks",
            1,
        ]
    )
    assert code == 0 and (tmp_path / "lin" / "linear.json").is_file(), text


def test_kill9_while_sharding_to_s3_then_resume(s3, photos, tmp_path):
    """kill -9 a `shard --out s3://` run after a few shards were uploaded; the rerun keeps them and the
    result is byte for byte the local run's."""
    from conftest import write_image_tree

    tree = write_image_tree(tmp_path / "tree", photos, classes=4, per_class=30)
    args = ["--shard-samples", "2", "--workers", "1", "-q"]
    subprocess.run([sys.executable, "-m", "dino_pipe", "shard", str(tree), "--out", str(tmp_path / "local"), *args],
                   check=True, capture_output=True, timeout=300)
    url = f"s3://{s3.bucket}/kill/set"
    cmd = [sys.executable, "-m", "dino_pipe", "shard", str(tree), "--out", url, *args]
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if sum(".dino-pipe-shard-journal/shard-" in k for k in keys(s3, "kill/set/")) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "kill/set/manifest.json" not in keys(s3)
    res = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "resumed" in res.stdout, res.stdout + res.stderr
    local = sorted(p for p in (tmp_path / "local").iterdir() if p.name.startswith("shard-"))
    stored = keys(s3, "kill/set/")
    assert len(local) == 120 and sorted(Path(k).name for k in stored if "/shard-" in k) == [p.name for p in local]
    for p in local:
        assert get(s3, f"kill/set/{p.name}") == p.read_bytes(), p.name
    assert not [k for k in stored if ".dino-pipe-shard-journal" in k]
