"""The untrained baseline of a k-NN result: the step-0 value of the run's own online k-NN.

A k-NN accuracy alone cannot be judged: 83 % may be a large gain or none. A run that measured its online
k-NN (``eval.online_knn_*``, on by default when ``--data`` has a labelled ``val/`` beside ``train/``) holds
the untrained network's value as its step-0 record in ``metrics.jsonl``. :func:`run_baseline` finds it for
a ``dino-pipe eval knn`` result when it measured the same thing: the teacher, the same train and val shard
sets, the same evaluation resize/crop and temperature; else ``None`` (then ``--random-init`` measures it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dino_pipe.atomic import read_jsonl


def _run_dir(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def _same_path(a: str, b: str | None) -> bool:
    return bool(a) and bool(b) and Path(a).resolve() == Path(b).resolve()


def _run_config(run_dir: Path) -> dict | None:
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def run_baseline(result: dict[str, Any]) -> dict[str, Any] | None:
    """``{"top1", "top5", "k", "source"}`` of the untrained network for an ``eval knn`` result, from the
    step-0 online k-NN record of the checkpoint's run; ``None`` when there is none that compares."""
    src = result.get("checkpoint") or {}
    if src.get("random_init") or src.get("which") != "teacher" or not src.get("checkpoint"):
        return None
    run_dir = _run_dir(Path(src["checkpoint"]))
    cfg = _run_config(run_dir)
    if cfg is None:
        return None
    ev, data = cfg.get("eval") or {}, cfg.get("data") or {}
    same = (_same_path(ev.get("online_knn_train", ""), result["data"]["train"].get("path"))
            and _same_path(ev.get("online_knn_val", ""), result["data"]["val"].get("path"))
            and data.get("eval_resize") == result["data"].get("eval_resize")
            and data.get("eval_crop") == result["data"].get("eval_crop")
            and float(ev.get("knn_temperature", 0.07)) == float(result["knn"]["temperature"]))
    if not same:
        return None
    step0 = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("step") == 0 and "knn_top1" in r]
    if not step0:
        return None
    r = step0[0]
    return {"top1": r["knn_top1"], "top5": r.get("knn_top5"), "k": r.get("knn_k"),
            "source": f"{run_dir / 'metrics.jsonl'}: the online k-NN at step 0 (the untrained network)"}
