"""The commands as typed in a fresh folder, with no paths: shard ./imagenet, train, eval knn (dino_pipe.workspace)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_image_tree
from typer.testing import CliRunner

from dino_pipe.cli import app
from dino_pipe.runs.run_dir import record_data
from dino_pipe.workspace import default_data, default_run_folder, find_shard_sets, latest_run

runner = CliRunner()

# a 1-block ViT on 32-px crops: two steps take a second on the CPU
TINY = ["model.arch=vit_tiny_patch16_224", "model.arch_kwargs={img_size: 32, patch_size: 8, depth: 1}",
        "model.out_dim=64", "model.hidden_dim=32", "model.bottleneck_dim=16", "data.global_size=32",
        "data.local_size=16", "data.n_local=2", "data.eval_resize=32", "data.eval_crop=32", "optim.warmup_epochs=0",
        "train.cpu_threads=1", "train.epochs=1"]


def cli(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), f"raised {res.exception!r}\n{res.output}"
    assert res.exit_code == 0, res.output
    return res.output


def one_error(*args: str) -> str:
    res = runner.invoke(app, list(args))
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_shard_train_eval_as_typed(tmp_path, photos, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image_tree(tmp_path / "imagenet" / "train", photos, classes=3, per_class=8)
    write_image_tree(tmp_path / "imagenet" / "val", photos, classes=3, per_class=3, seed=1)
    cli("shard", "./imagenet", "-q", "--workers", "1")
    assert (tmp_path / "shards" / "imagenet" / "train" / "manifest.json").is_file()

    out = cli("train", "--gpus", "0", "--batch-size", "8", "-q", "train.max_steps=2", *TINY)
    run = tmp_path / "runs" / "imagenet-vit_small_imagenet"
    assert "data: shards/imagenet/train" in out and f"run folder: runs/{run.name} (new" in out, out
    assert "config: vit_small_imagenet" in out
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert json.loads((run / "data.json").read_text())["train"] == str((tmp_path / "shards/imagenet/train").resolve())

    out = cli("train", "--gpus", "0", "--batch-size", "8", "-q", "train.max_steps=3", *TINY)  # same run: resumed
    assert "resuming it" in out and json.loads((run / "summary.json").read_text())["steps"] == 3
    out = cli("train", "--gpus", "0", "--batch-size", "4", "-q", "train.max_steps=1", *TINY)  # another config
    assert f"runs/{run.name}-2 (new" in out and (tmp_path / "runs" / f"{run.name}-2" / "summary.json").is_file()

    manifest = tmp_path / "shards" / "imagenet" / "train" / "manifest.json"  # as ImageNet's has them
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "class_names": ["tench", "goldfish", "great white shark"]}))
    os_touch_later(run)  # the first run is the latest again
    out = cli("eval", "knn", "--gpus", "0", "--k", "3")
    assert f"checkpoint: the latest run runs/{run.name}" in out, out
    assert "val set: " in out and str(Path("shards/imagenet/val").resolve()) in out.replace("\n", "")
    result = json.loads((run / "knn.json").read_text())
    assert result["data"]["train"]["num_samples"] == 24 and result["data"]["val"]["num_samples"] == 9
    assert result["checkpoint"]["step"] == 3
    assert result["data"]["train"]["class_names"] == ["tench", "goldfish", "great white shark"]
    per_class = result["results"][0]["class_top1"]
    assert len(per_class) == 3 and all(0 <= a <= 100 for a in per_class)
    assert result["results"][0]["top1"] == pytest.approx(sum(per_class) / 3)  # 3 val images per class
    assert "worst classes at k = 3 (top-1 %): class_0" in out and ("tench" in out and "goldfish" in out)
    assert "class_names" not in result["data"]["val"]  # the val manifest has none: the wnids alone

    out = cli("eval", "linear", "--gpus", "0", "--epochs", "1", "--batch-size", "8", "--n-last-blocks", "1")
    assert "output: runs/" in out and json.loads((run / "linear.json").read_text())["complete"]
    image = next((tmp_path / "imagenet" / "val").rglob("*.jpg"))
    cli("viz", "attention", str(image))
    assert list((run / "attention").glob("*-attention.png"))
    cli("export", "--which", "teacher")
    assert (run / "backbone.safetensors").is_file()
    cli("viz", "curves")
    assert (run / "curves.png").is_file()


def os_touch_later(run: Path) -> None:
    """Make ``run``'s newest checkpoint the most recently written of all runs."""
    import os
    import time

    newest = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    t = time.time() + 5
    os.utime(newest, (t, t))


def test_no_or_several_shard_sets_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_error("train", "--gpus", "0")
    assert "no shard set under ./shards" in line and "dino-pipe shard" in line
    for name in ("a", "b"):
        (tmp_path / "shards" / name / "train").mkdir(parents=True)
        (tmp_path / "shards" / name / "train" / "manifest.json").write_text("{}")
    line = one_error("train", "--gpus", "0")
    assert "2 shard sets" in line and "shards/a/train" in line and "shards/b/train" in line
    line = one_error("eval", "knn", "--gpus", "0")
    assert "no run under ./runs" in line and "--checkpoint" in line


def test_find_shard_sets_forms(tmp_path):
    root = tmp_path / "shards"
    for folder in ("imagenet/train", "imagenet/val", "mine", "nolabels/x"):
        (root / folder).mkdir(parents=True)
    for folder in ("imagenet/train", "imagenet/val", "mine"):
        (root / folder / "manifest.json").write_text("{}")
    found = {s.name: s for s in find_shard_sets(root)}
    assert set(found) == {"imagenet", "mine"}
    assert found["imagenet"].val == root / "imagenet" / "val" and found["mine"].val is None
    with pytest.raises(Exception, match="2 shard sets"):
        default_data(root)
    # `dino-pipe shard SRC --out shards` puts the sets straight under shards/
    flat = tmp_path / "flat"
    for split in ("train", "val"):
        (flat / split).mkdir(parents=True)
        (flat / split / "manifest.json").write_text("{}")
    assert [(s.train, s.val) for s in find_shard_sets(flat)] == [(flat / "train", flat / "val")]


def test_run_folder_keeps_a_different_run(tmp_path):
    from dino_pipe.config import load_config

    cfg = load_config("vit_small_imagenet")
    data = tmp_path / "shards" / "x" / "train"
    data.mkdir(parents=True)
    root = tmp_path / "runs"
    first = default_run_folder(data, None, cfg, root=root)
    assert first.path == root / "x-vit_small_imagenet" and "new" in first.note
    first.path.mkdir(parents=True)
    (first.path / ".dino-pipe-run").write_text("{}")
    (first.path / "config.yaml").write_text(json.dumps(cfg.to_dict()))
    record_data(first.path, data)
    assert default_run_folder(data, None, cfg, root=root).path == first.path  # same data + config: resume
    other = load_config("vit_small_imagenet", ["optim.base_lr=1e-3"])
    assert default_run_folder(data, None, other, root=root).path == root / "x-vit_small_imagenet-2"
    with pytest.raises(Exception, match="no run with a checkpoint"):
        latest_run(root)


def test_run_folder_of_an_s3_set_is_resumed(tmp_path, monkeypatch):
    """Training reads an s3:// set from the shard cache (which the run notes): the same URL finds the run again."""
    from dino_pipe.config import load_config

    monkeypatch.setenv("DINO_PIPE_CACHE", str(tmp_path / "cache"))
    cfg = load_config("vit_small_imagenet")
    url = "s3://bucket/datasets/imagenet/train"
    root = tmp_path / "runs"
    first = default_run_folder(url, None, cfg, root=root)
    assert first.path == root / "imagenet-vit_small_imagenet"
    first.path.mkdir(parents=True)
    (first.path / ".dino-pipe-run").write_text("{}")
    (first.path / "config.yaml").write_text(json.dumps(cfg.to_dict()))
    record_data(first.path, tmp_path / "cache" / "s3" / "bucket" / "datasets" / "imagenet" / "train")
    assert default_run_folder(url, None, cfg, root=root).path == first.path
