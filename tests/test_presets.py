"""The ImageNet presets against the official DINO runs they name (README "Presets"), the global batch, the
ResNet-50 initialisation and `config show`."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from dino_pipe.cli import app
from dino_pipe.config import load_config, resolve_batch
from dino_pipe.errors import UserError

# main_dino.py's defaults (facebookresearch/dino), the DINOHead's sizes, and the world size of a plain launch
MAIN_DINO = {"out_dim": 65536, "norm_last_layer": True, "momentum_teacher": 0.996, "use_bn_in_head": False,
             "warmup_teacher_temp": 0.04, "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0, "weight_decay": 0.04,
             "weight_decay_end": 0.4, "clip_grad": 3.0, "batch_size_per_gpu": 64, "epochs": 100,
             "freeze_last_layer": 1, "lr": 0.0005, "warmup_epochs": 10, "min_lr": 1e-6, "optimizer": "adamw",
             "drop_path_rate": 0.1, "global_crops_scale": (0.4, 1.0), "local_crops_scale": (0.05, 0.4),
             "local_crops_number": 8, "use_fp16": True, "seed": 0, "world_size": 8}
# Each preset: the official run's arguments (README command or published args.txt), and its published results.
OFFICIAL = {
    "vit_small_imagenet": ({"arch": "vit_small_patch16_224"}, (69.3, 74.0)),
    "vit_small_300ep": ({"arch": "vit_small_patch16_224", "epochs": 300, "teacher_temp": 0.07,
                         "warmup_teacher_temp_epochs": 30, "norm_last_layer": False, "world_size": 16}, (73.3, 76.0)),
    "vit_small_best": ({"arch": "vit_small_patch16_224", "norm_last_layer": False, "teacher_temp": 0.07,
                        "warmup_teacher_temp_epochs": 30, "use_fp16": False, "clip_grad": 0.0, "epochs": 800,
                        "min_lr": 1e-5, "global_crops_scale": (0.25, 1.0), "local_crops_scale": (0.05, 0.25),
                        "local_crops_number": 10, "world_size": 16}, (74.5, 77.0)),
    "vit_base_imagenet": ({"arch": "vit_base_patch16_224", "world_size": 16}, None),
    "resnet50_imagenet": ({"arch": "resnet50", "optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4,
                           "weight_decay_end": 1e-4, "global_crops_scale": (0.14, 1.0),
                           "local_crops_scale": (0.05, 0.14), "drop_path_rate": 0.0}, None),
}


def _ours(name: str) -> dict:
    """The preset's values under main_dino.py's argument names."""
    c = load_config(name)
    return {"arch": c.model.arch, "out_dim": c.model.out_dim, "norm_last_layer": c.model.norm_last_layer,
            "momentum_teacher": c.optim.momentum_teacher, "use_bn_in_head": c.model.use_bn_in_head,
            "warmup_teacher_temp": c.loss.warmup_teacher_temp, "teacher_temp": c.loss.teacher_temp,
            "warmup_teacher_temp_epochs": c.loss.warmup_teacher_temp_epochs, "weight_decay": c.optim.weight_decay,
            "weight_decay_end": c.optim.weight_decay_end, "clip_grad": c.optim.clip_grad,
            "global_batch": c.data.global_batch_size, "epochs": c.train.epochs,
            "freeze_last_layer": c.optim.freeze_last_layer_epochs, "lr": c.optim.base_lr,
            "warmup_epochs": c.optim.warmup_epochs, "min_lr": c.optim.min_lr, "optimizer": c.optim.optimizer,
            "drop_path_rate": c.model.drop_path, "global_crops_scale": c.data.global_scale,
            "local_crops_scale": c.data.local_scale, "local_crops_number": c.data.n_local, "seed": c.train.seed,
            "head": (c.model.hidden_dim, c.model.bottleneck_dim, c.model.head_layers), "precision": c.train.precision}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_preset_is_the_official_run(name):
    args, _ = OFFICIAL[name]
    want = {**MAIN_DINO, **args}
    want["global_batch"] = want.pop("batch_size_per_gpu") * want.pop("world_size")
    ours = _ours(name)
    for key, value in want.items():
        if key == "use_fp16":  # the one stated difference: bf16 autocast (train.precision=fp16/fp32 to match)
            assert ours["precision"] == "auto", name
            continue
        got = ours[key]
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, (name, key, got, value)
    assert ours["head"] == (2048, 256, 3)


def test_readme_table_states_every_preset_and_its_published_results():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {ln.split("|")[1].strip(" `"): ln for ln in readme.splitlines() if ln.startswith("| `")}
    for name, (_, published) in OFFICIAL.items():
        assert name in rows, name
        batch = f"{load_config(name).data.global_batch_size:,}"
        assert batch in rows[name], (name, batch)
        if published:
            assert f"{published[0]}" in rows[name] and f"{published[1]}" in rows[name], name


def test_global_batch_sets_the_per_process_batch_and_the_lr():
    from dino_pipe.train.schedules import Schedules

    cfg = load_config("vit_small_best")
    for world, per in ((16, 64), (8, 128), (1, 1024)):
        r = resolve_batch(cfg, world)
        assert r.data.batch_size == per
        lr = Schedules.from_config(r, 10, r.data.batch_size * world).lr
        assert lr.max() == pytest.approx(5e-4 * 1024 / 256, rel=1e-3)  # the reference's peak lr, any GPU count
    assert cfg.data.batch_size == 64  # resolve_batch copies
    with pytest.raises(UserError, match="does not divide by the 6 processes"):
        resolve_batch(cfg, 6)
    typed = load_config("vit_small_best", ["data.batch_size=32"])  # an explicit per-process batch wins
    assert typed.data.global_batch_size == 0 and resolve_batch(typed, 6).data.batch_size == 32
    both = load_config("vit_small_best", ["data.batch_size=32", "data.global_batch_size=256"])
    assert resolve_batch(both, 4).data.batch_size == 64


def test_resnet50_preset_is_initialised_as_torchvision():
    """timm zero-initialises each block's last BatchNorm; the reference (torchvision) keeps weight 1."""
    from dino_pipe.models.backbone import create_backbone

    model = create_backbone(load_config("resnet50_imagenet").model)
    bn3 = [m.bn3.weight for m in model.modules() if hasattr(m, "bn3")]
    assert len(bn3) == 16 and all(bool((w == 1).all()) for w in bn3)


def test_config_show_prints_the_resolved_preset(tmp_path):
    res = CliRunner().invoke(app, ["config", "show", "--config", "vit_small_300ep", "--gpus", "8",
                                   "train.epochs=5", "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.output.split("results written")[0])
    assert shown["train"]["epochs"] == 5 and shown["loss"]["teacher_temp"] == 0.07
    assert shown["data"]["global_batch_size"] == 1024 and shown["data"]["batch_size"] == 128
    assert json.loads((tmp_path / "c.json").read_text())["model"]["norm_last_layer"] is False
    res = CliRunner().invoke(app, ["config", "show", "--config", "nope"])
    assert res.exit_code != 0 and "vit_small_best" in res.output  # lists the presets


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_preset_header_names_its_source(name):
    from dino_pipe.config import PRESETS_DIR

    header = "".join(ln for ln in (PRESETS_DIR / f"{name}.yaml").read_text().splitlines(True) if ln.startswith("#"))
    assert "facebookresearch/dino" in header and "global batch" in header, name
    published = OFFICIAL[name][1]
    if published:
        assert f"{published[0]}%" in header and f"{published[1]}%" in header, name


def test_a_run_made_before_global_batch_resumes():
    """Its config lacks data.global_batch_size; resolved for the same process count nothing computed differs."""
    from dino_pipe.runs.run_dir import config_differences

    old = load_config(None, ["data.batch_size=64"]).to_dict()
    del old["data"]["global_batch_size"]
    assert config_differences(old, resolve_batch(load_config("vit_small_imagenet"), 8).to_dict()) == []
    assert config_differences(old, resolve_batch(load_config("vit_small_imagenet"), 4).to_dict()) == [
        "data.batch_size: 64 -> 128"]
