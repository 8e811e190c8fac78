"""An eval knn result of a run's checkpoint carries the untrained network's top-1: the run's step-0 online k-NN,
when it measured the same thing."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dino_pipe.eval.baseline import run_baseline


def _run(tmp_path: Path, train: Path, val: Path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-00000125.pt").write_bytes(b"")
    cfg = {"eval": {"online_knn_train": str(train), "online_knn_val": str(val), "knn_temperature": 0.07},
           "data": {"eval_resize": 32, "eval_crop": 32}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    records = [{"step": 0, "knn_top1": 60.3, "knn_top5": 94.8, "knn_k": 20}, {"step": 10, "loss": 5.9},
               {"step": 125, "knn_top1": 66.4, "knn_k": 20}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _result(run: Path, train: Path, val: Path, **changes) -> dict:
    result = {"checkpoint": {"checkpoint": str(run / "checkpoints" / "step-00000125.pt"), "which": "teacher",
                             "random_init": False},
              "data": {"train": {"path": str(train.resolve())}, "val": {"path": str(val.resolve())},
                       "eval_resize": 32, "eval_crop": 32},
              "knn": {"temperature": 0.07}}
    for key, value in changes.items():
        section, name = key.split("__")
        result[section] = {**result[section], name: value}
    return result


def test_the_runs_step0_online_knn_is_the_baseline_of_the_same_measurement(tmp_path):
    train, val = tmp_path / "sets" / "train", tmp_path / "sets" / "val"
    run = _run(tmp_path, train, val)
    base = run_baseline(_result(run, train, val))
    assert base is not None and (base["top1"], base["top5"], base["k"]) == (60.3, 94.8, 20)
    assert "step 0" in base["source"] and "metrics.jsonl" in base["source"]
    # not the same measurement: no baseline (eval knn then says how to measure it)
    other = tmp_path / "elsewhere"
    assert run_baseline(_result(run, train, other)) is None
    assert run_baseline(_result(run, train, val, data__eval_resize=64)) is None
    assert run_baseline(_result(run, train, val, knn__temperature=0.1)) is None
    assert run_baseline(_result(run, train, val, checkpoint__which="student")) is None
    assert run_baseline(_result(run, train, val, checkpoint__random_init=True)) is None
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 5.9}) + "\n")
    assert run_baseline(_result(run, train, val)) is None
