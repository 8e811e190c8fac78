"""viz curves: counts said in words that agree in number, the step-0 baseline drawn, legends off the curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dino_pipe.cli import app

pytest.importorskip("matplotlib")


def _run(tmp_path: Path, online_steps: list[int]) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    records = [{"step": s, "loss": 6.0 - s / 100, "teacher_entropy": 5.0 + s / 1000} for s in range(10, 130, 10)]
    records += [{"step": s, "knn_top1": 60.0 + s / 10, "knn_k": 20} for s in online_steps]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _knn_file(tmp_path: Path, step: int) -> Path:
    f = tmp_path / f"knn-{step}.json"
    f.write_text(json.dumps({"results": [{"k": 20, "top1": 70.0, "top5": 90.0}],
                             "checkpoint": {"step": step, "random_init": False}}))
    return f


def test_counts_agree_in_number(tmp_path):
    run = _run(tmp_path, [0, 60, 120])
    res = CliRunner().invoke(app, ["viz", "curves", str(run), "--knn", str(_knn_file(tmp_path, 120))])
    assert res.exit_code == 0, res.output
    assert "1 k-NN result, 3 online k-NN points" in res.output
    from dino_pipe.eval.curves import plot_curves

    fig_result = plot_curves(run, tmp_path / "c.png", [])
    assert [p["top1"] for p in fig_result["online_knn"]] == [60.0, 66.0, 72.0]
    res = CliRunner().invoke(app, ["viz", "curves", str(_run(tmp_path / "b", [])), "--out", str(tmp_path / "d.png")])
    assert res.exit_code == 0 and "0 k-NN results" in res.output and "online" not in res.output, res.output


def test_legends_sit_below_the_panels_and_name_the_untrained_baseline(tmp_path, monkeypatch):
    """No legend box overlaps a panel's plot area, so none covers the end of a curve; the step-0 online k-NN is
    drawn as the untrained network's line, with its value."""
    import matplotlib.pyplot as plt

    from dino_pipe.eval.curves import plot_curves

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    plot_curves(_run(tmp_path, [0, 60, 120]), tmp_path / "c.png", [_knn_file(tmp_path, 120)])
    fig = figures[-1]
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(panels) == 2
    for ax in panels:
        legend_box, plot_box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        assert legend_box.y1 <= plot_box.y0, (legend_box, plot_box)
    labels = [t.get_text() for t in panels[1].get_legend().get_texts()]
    assert "untrained network (online, step 0): 60.0%" in labels and any("trained teacher" in x for x in labels)
