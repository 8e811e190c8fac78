"""The typed config tree: presets, dotted overrides and one-line errors."""

from pathlib import Path

import pytest

from dino_pipe.config import Config, config_from_dict, load_config, parse_override
from dino_pipe.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_reference_recipe():
    c = load_config()
    assert c.data.global_size == 224 and c.data.local_size == 96 and c.data.n_local == 8
    assert c.data.global_scale == (0.4, 1.0) and c.data.local_scale == (0.05, 0.4)
    assert c.data.blur_p_global == (1.0, 0.1) and c.data.solarize_p_global == (0.0, 0.2)
    assert c.loss.student_temp == 0.1 and c.loss.center_momentum == 0.9
    assert c.optim.base_lr == 5e-4 and c.optim.momentum_teacher == 0.996
    assert c.model.out_dim == 65536


def test_dotted_overrides_are_typed():
    c = load_config(
        None,
        [
            "optim.base_lr=1e-3",
            "data.n_local=10",
            "data.global_scale=[0.3, 1.0]",
            "train.compile=true",
            "model.arch_kwargs={img_size: 32}",
        ],
    )
    assert c.optim.base_lr == pytest.approx(1e-3) and isinstance(c.optim.base_lr, float)
    assert c.data.n_local == 10
    assert c.data.global_scale == (0.3, 1.0)
    assert c.train.compile is True
    assert c.model.arch_kwargs == {"img_size": 32}


def test_parse_override_nests():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.base_lrr=1", "optim.base_lrr"),
        ("nosection.x=1", "nosection"),
        ("data.n_local=two", "data.n_local"),
        ("data.n_local=-1", "data.n_local"),
        ("data.flip_p=1.5", "data.flip_p"),
        ("train.precision=fp8", "train.precision"),
        ("data.global_scale=[0.5]", "data.global_scale"),
        ("train.compile=maybe", "train.compile"),
        ("optim", "optim"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_yaml_preset_with_base_and_scientific_floats(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  base_lr: 5e-4\ndata:\n  n_local: 6\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ndata:\n  n_local: 2\n")
    c = load_config(tmp_path / "child.yaml")
    assert c.optim.base_lr == pytest.approx(5e-4) and c.data.n_local == 2


def test_missing_and_broken_yaml_are_one_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_round_trip_through_dict():
    c = load_config(None, ["data.n_local=3", "eval.knn_k=[5, 7]"])
    assert config_from_dict(c.to_dict()) == c
    assert isinstance(Config().to_dict()["data"]["global_scale"], list)


PRESETS = sorted(p.name for p in CONFIGS.glob("*.yaml"))


def test_the_documented_presets_exist():
    assert {
        "vit_small_imagenet.yaml",
        "vit_small_best.yaml",
        "vit_base_imagenet.yaml",
        "resnet50_imagenet.yaml",
        "cpu_small.yaml",
        "demo_mnist.yaml",
    } <= set(PRESETS)


def test_small_presets_evaluate_at_their_training_size():
    """`eval knn --checkpoint RUN` needs no --resize/--crop for the 32-px presets; both are ViTs (attention)."""
    for name in ("cpu_small.yaml", "demo_mnist.yaml"):
        c = load_config(CONFIGS / name)
        assert (c.data.eval_resize, c.data.eval_crop) == (c.data.global_size, c.data.global_size) == (32, 32), name
    general, demo = load_config(CONFIGS / "cpu_small.yaml"), load_config(CONFIGS / "demo_mnist.yaml")
    assert (
        general.data.flip_p == 0.5 and general.data.solarize_p_global == (0.0, 0.2) and general.data.grayscale_p == 0.2
    )
    assert general.model.arch.startswith("vit_") and general.loss.centering == "sinkhorn"
    assert general.loss.koleo_weight > 0
    assert demo.model.arch.startswith("vit_") and demo.data.flip_p == 0.0


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads(preset):
    cfg = load_config(CONFIGS / preset)
    assert cfg.model.arch and cfg.train.epochs >= 1


def test_dict_override_replaces_the_presets_dict(tmp_path):
    """A dotted override of a dict-valued key replaces it (a preset's ViT kwargs do not leak into a ResNet)."""
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "model:\n  arch: vit_tiny_patch16_224\n  arch_kwargs: {img_size: 32, patch_size: 8}\n  out_dim: 64\n"
    )
    c = load_config(preset, ["model.arch=resnet18", "model.arch_kwargs={}"])
    assert c.model.arch_kwargs == {} and c.model.arch == "resnet18" and c.model.out_dim == 64
    c = load_config(preset, ["model.arch_kwargs={depth: 2}"])
    assert c.model.arch_kwargs == {"depth": 2}
    c = load_config(preset, ["model={out_dim: 32}"])  # a section still merges key by key
    assert c.model.out_dim == 32 and c.model.arch_kwargs == {"img_size": 32, "patch_size": 8}
