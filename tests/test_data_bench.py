"""bench_loader (DALI and reference), the CLI command, and the reference multi-crop transform."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from dino_pipe.cli import app
from dino_pipe.config import DataConfig
from dino_pipe.data.bench import bench_loader
from dino_pipe.data.reference import MultiCropTransform, reference_loader

TINY = dict(batch_size=8, threads=1, n_local=2, steps=2, warmup=1, global_size=48, local_size=24)


def test_bench_loader_dali_and_reference(tiny_shardset):
    for loader in ("dali", "reference"):
        r = bench_loader(tiny_shardset, loader=loader, **TINY)
        assert r["loader"] == loader and r["views_per_image"] == 4 and r["steps"] == 2
        assert r["images_per_s"] > 0 and abs(r["views_per_s"] - 4 * r["images_per_s"]) < 0.05 * r["views_per_s"]
        assert r["cpu_ms_per_image"] > 0


def test_reference_views_match_the_recipe(tiny_shardset):
    cfg = DataConfig(global_size=48, local_size=24, n_local=3)
    views, labels = next(iter(reference_loader(tiny_shardset, cfg, batch_size=4, workers=0, n_local=3)))
    assert [tuple(v.shape) for v in views] == [(4, 3, 48, 48)] * 2 + [(4, 3, 24, 24)] * 3
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2, 3}
    assert len(MultiCropTransform(cfg, 0).transforms) == 2


def test_cli_bench_loader_writes_json(tiny_shardset, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "loader", str(tiny_shardset), "--device", "cpu", "--batch-size", "8",
                                      "--threads", "1", "--n-local", "2", "--steps", "2", "--warmup", "1",
                                      "--global-size", "48", "--local-size", "24", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["loader"] == "dali" and data["n_local"] == 2 and data["images_per_s"] > 0


def test_deviation_effects_are_measured(tiny_shardset):
    from dino_pipe.data.fidelity import deviation_effects

    d = deviation_effects(tiny_shardset, n_views=24, size=48)
    assert d["grayscale_via_saturation_0"]["mean_abs_pixel_diff"] == 0.0  # same luma weights as PIL "L"
    assert d["blur_gaussian_vs_pil"]["mean_abs_pixel_diff"] < 1.5  # a true Gaussian ~ PIL's box approximation
    # contrast about the mean grey (default) removes most of the 128-centre deviation
    assert d["jitter_total"]["mean_abs_pixel_diff"] < d["jitter_total_centre_128"]["mean_abs_pixel_diff"]
    assert d["jitter_fixed_order"]["mean_abs_pixel_diff"] < d["jitter_total"]["mean_abs_pixel_diff"]


def test_resize_filters_vs_pil_bicubic(tiny_shardset):
    """DALI cubic reproduces PIL bicubic; the default Gaussian shrink stays within a grey level, closer than linear."""
    from dino_pipe.data.fidelity import resize_filter_effects

    cfg = DataConfig(global_size=48, local_size=24)  # the ~120x100 px fixture photos: mostly downscales
    r = resize_filter_effects(tiny_shardset, cfg, n_views=60)
    mad = {k: v["all"]["mean_abs_pixel_diff"] for k, v in r.items()}
    assert mad["cubic"] < 0.4
    assert mad["cubic"] < mad["gaussian"] < mad["linear"]
    assert mad["gaussian"] < 1.5
    assert abs(r["gaussian"]["all"]["view_mean_shift"]) < 0.2  # resampling keeps the mean
    assert DataConfig().interp == "gaussian"


def test_unknown_resize_filter_is_a_user_error():
    import pytest

    from dino_pipe.data.graph import resize_filters
    from dino_pipe.errors import UserError

    assert set(resize_filters("gaussian")) == {"min_filter", "mag_filter"}
    with pytest.raises(UserError, match="data.interp"):
        resize_filters("lanczos")
