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


def _legend_below(ax, handles: list, labels: list[str]) -> None:
    """One legend under the panel (outside the plot area), so it never covers a curve's end."""
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)


def _loss_panel(ax, records: list[dict]) -> None:
    """Loss per logged step, and the teacher entropy on a second axis when logged."""
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], color="tab:blue", label="DINO loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    ent = [(r["step"], r["teacher_entropy"]) for r in records if r.get("teacher_entropy") is not None]
    if ent:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in ent], [e for _, e in ent], color="tab:orange", alpha=0.7, label="teacher entropy")
        ax2.set_ylabel("teacher entropy (nats)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    _legend_below(ax, handles, labels)


def _label_end(ax, x: float, y: float, color: str, text: str) -> None:
    ax.annotate(text, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8, color=color)


def _knn_panel(bx, online: list[dict], points: list[dict]) -> None:
    """Online k-NN per measured step (step 0 = the untrained network, drawn as a line across) and the k-NN of
    evaluated checkpoints, with the untrained baseline of ``eval knn --random-init`` as a dashed line."""
    if online:
        bx.plot([r["step"] for r in online], [r["knn_top1"] for r in online], "s-", color="tab:purple",
                label=f"online k-NN, teacher (k={online[0].get('knn_k')})")
        _label_end(bx, online[-1]["step"], online[-1]["knn_top1"], "tab:purple", f"{online[-1]['knn_top1']:.1f}%")
        if online[0]["step"] == 0:
            bx.axhline(online[0]["knn_top1"], color="tab:purple", linestyle=":", alpha=0.7,
                       label=f"untrained network (online, step 0): {online[0]['knn_top1']:.1f}%")
    trained = [p for p in points if not p["random_init"]]
    if trained:
        bx.plot([p["step"] for p in trained], [p["top1"] for p in trained], "o-", color="tab:green",
                label=f"trained teacher (k={trained[0]['k']})")
        _label_end(bx, trained[-1]["step"], trained[-1]["top1"], "tab:green", f"{trained[-1]['top1']:.1f}%")
    for p in (p for p in points if p["random_init"]):
        bx.axhline(p["top1"], color="tab:red", linestyle="--",
                   label=f"untrained network (k={p['k']}): {p['top1']:.1f}%")
    bx.set_xlabel("step")
    bx.set_ylabel("k-NN top-1 %")
    bx.set_title("k-NN accuracy on the validation set")
    bx.margins(x=0.12, y=0.08)  # room for the end labels
    bx.grid(alpha=0.3)
    _legend_below(bx, *bx.get_legend_handles_labels())


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
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 4.6), squeeze=False, layout="constrained")
    _loss_panel(axes[0][0], records)
    if panels == 2:
        _knn_panel(axes[0][1], online, points)
    fig.suptitle(str(run_dir), fontsize=9)
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
