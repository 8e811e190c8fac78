"""Training curves of a run: the loss (and teacher entropy) from ``metrics.jsonl`` and the k-NN
top-1 of evaluated checkpoints and of the online k-NN the run measured itself (``eval.online_knn_*``),
drawn as one PNG.

k-NN points come from the JSON files ``dino-pipe eval knn --json`` writes (they record the
checkpoint's step, or ``random_init`` for the untrained baseline, drawn at step 0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dino_pipe.atomic import atomic_open, read_jsonl
from dino_pipe.errors import UserError


def knn_points(knn_files: list[Path], k: int = 20) -> list[dict[str, Any]]:
    """``[{step, top1, top5, k}]`` sorted by step, one per k-NN result file (closest k to ``k``)."""
    points = []
    for f in knn_files:
        try:
            res = json.loads(Path(f).read_text())
            rows = res["results"]
            src = res["checkpoint"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{f}: not a k-NN result file (write one with dino-pipe eval knn --json)") from None
        row = min(rows, key=lambda r: abs(r["k"] - k))
        step = 0 if src.get("random_init") else int(src.get("step") or 0)
        points.append(
            {
                "step": step,
                "top1": row["top1"],
                "top5": row["top5"],
                "k": row["k"],
                "random_init": bool(src.get("random_init")),
                "file": str(f),
            }
        )
    return sorted(points, key=lambda p: (p["step"], not p["random_init"]))


def plot_curves(run_dir: str | Path, out_png: str | Path, knn_files: list[Path] = (), k: int = 20) -> dict:
    """Draw loss / teacher entropy per logged step and k-NN top-1 per checkpoint into ``out_png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("viz curves needs matplotlib: pip install 'dino-pipe[plots]'") from None
    run_dir = Path(run_dir)
    all_records = read_jsonl(run_dir / "metrics.jsonl")
    records = [r for r in all_records if "loss" in r]
    online = [r for r in all_records if "knn_top1" in r]
    if not records:
        raise UserError(f"{run_dir}: no metrics.jsonl with loss records (is it a dino-pipe train run directory?)")
    points = knn_points(list(knn_files), k)

    panels = 2 if points or online else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 4.0), squeeze=False)
    ax = axes[0][0]
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["loss"] for r in records], color="tab:blue", label="DINO loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ent = [(r["step"], r["teacher_entropy"]) for r in records if r.get("teacher_entropy") is not None]
    if ent:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in ent], [e for _, e in ent], color="tab:orange", alpha=0.7, label="teacher entropy")
        ax2.set_ylabel("teacher entropy (nats)")
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    if points or online:
        bx = axes[0][1]
        if online:
            bx.plot(
                [r["step"] for r in online],
                [r["knn_top1"] for r in online],
                "s-",
                color="tab:purple",
                label=f"online k-NN, teacher (k={online[0].get('knn_k')})",
            )
            if online[0]["step"] == 0:
                bx.axhline(
                    online[0]["knn_top1"], color="tab:purple", linestyle=":", alpha=0.7, label="online k-NN at step 0"
                )
        trained = [p for p in points if not p["random_init"]]
        base = [p for p in points if p["random_init"]]
        if trained:
            bx.plot(
                [p["step"] for p in trained],
                [p["top1"] for p in trained],
                "o-",
                color="tab:green",
                label=f"trained teacher (k={trained[0]['k']})",
            )
        for p in base:
            bx.axhline(p["top1"], color="tab:red", linestyle="--", label=f"untrained network (k={p['k']})")
        bx.set_xlabel("step")
        bx.set_ylabel("k-NN top-1 %")
        bx.set_title("k-NN accuracy on the validation set")
        bx.legend(loc="lower right", fontsize=8)
        bx.grid(alpha=0.3)
    fig.suptitle(str(run_dir), fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_open(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return {
        "png": str(out_png),
        "run_dir": str(run_dir),
        "loss_first": records[0]["loss"],
        "loss_last": records[-1]["loss"],
        "logged_steps": len(records),
        "knn": points,
        "online_knn": [{"step": r["step"], "top1": r["knn_top1"]} for r in online],
    }
