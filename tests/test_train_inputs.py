"""What a run is given: the online k-NN turned on by a labelled val/ beside train/, and the automatic torch
thread count that leaves the loader its cores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dino_pipe import cpus
from dino_pipe.config import load_config
from dino_pipe.train import inputs
from dino_pipe.train.inputs import default_online_knn


def _pair(root: Path, tiny_shardset: Path) -> Path:
    """root/train + root/val: copies of the tiny labelled set (as `dino-pipe shard` writes a train/val tree)."""
    for split in ("train", "val"):
        shutil.copytree(tiny_shardset, root / split)
    return root


def test_a_labelled_val_beside_train_turns_the_online_knn_on(tmp_path, tiny_shardset, monkeypatch):
    root = _pair(tmp_path / "set", tiny_shardset)
    cfg = default_online_knn(load_config(None, ["train.epochs=8"]), root / "train", say=False)
    assert (cfg.eval.online_knn_train, cfg.eval.online_knn_val) == (str(root / "train"), str(root / "val"))
    assert cfg.eval.online_knn_every_steps == 0  # 8 epochs: after every epoch
    many = default_online_knn(load_config(None, ["train.epochs=40", "data.batch_size=32"]), root / "train", say=False)
    assert many.eval.online_knn_every_steps == 4 * 3  # 40 short epochs (96 // 32 = 3 steps): every 4th epoch
    given = load_config(None, ["train.epochs=40", "eval.online_knn_every_steps=5"])
    assert default_online_knn(given, root / "train", say=False).eval.online_knn_every_steps == 5
    # off when asked, when configured, for a large bank, when the val set is missing, unlabelled or of other classes
    assert not default_online_knn(load_config(None, ["eval.online_knn_auto=false"]), root / "train").eval.online_knn_val
    given = load_config(None, [f"eval.online_knn_train={tiny_shardset}", f"eval.online_knn_val={tiny_shardset}"])
    assert default_online_knn(given, root / "train").eval.online_knn_val == str(tiny_shardset)
    assert not default_online_knn(load_config(None), "synthetic:64").eval.online_knn_val
    assert not default_online_knn(load_config(None), tiny_shardset).eval.online_knn_val  # no val/ beside it
    manifest = json.loads((root / "val" / "manifest.json").read_text())
    monkeypatch.setattr(inputs, "AUTO_KNN_MAX_SAMPLES", 95)  # a bank larger than the automatic limit (96 here)
    assert not default_online_knn(load_config(None), root / "train").eval.online_knn_val
    monkeypatch.undo()
    (root / "val" / "manifest.json").write_text(json.dumps({**manifest, "classes": ["a", "b", "c", "d"]}))
    assert not default_online_knn(load_config(None), root / "train").eval.online_knn_val
    (root / "val" / "manifest.json").write_text(json.dumps({**manifest, "classes": [], "labeled": False}))
    assert not default_online_knn(load_config(None), root / "train").eval.online_knn_val


@pytest.mark.parametrize(("cores", "cpu_threads", "loader", "procs", "expected"), [
    (2, 0, 1, 1, 1),    # cpu_small on 2 cores: 1 for the model, 1 for DALI
    (16, 0, 1, 1, 15),
    (16, 0, 1, 2, 7),   # 2 processes: 8 cores each, minus each one's loader thread
    (16, 0, 0, 1, 8),   # the loader's count automatic too: half the share
    (1, 0, 1, 1, 1),    # never below 1
    (2, 3, 1, 1, 3),    # train.cpu_threads given: as given
])
def test_automatic_torch_threads_leave_the_loader_its_cores(monkeypatch, cores, cpu_threads, loader, procs, expected):
    monkeypatch.setattr(cpus, "available_cores", lambda: cores)
    assert cpus.training_threads(cpu_threads, loader, procs) == expected
