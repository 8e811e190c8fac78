"""Export: timm loads the safetensors file by itself and gives our features."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from eval_helpers import write_tiny_checkpoint
from safetensors.torch import load_file

from dino_pipe.errors import UserError
from dino_pipe.eval.export import export_backbone, load_exported
from dino_pipe.eval.trained_backbone import load_backbone


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_timm_loads_the_export_and_gives_the_same_features(tmp_path, which):
    ckpt = write_tiny_checkpoint(tmp_path / "run", extra=["data.mean=[0.1307, 0.1307, 0.1307]",
                                                          "data.std=[0.3081, 0.3081, 0.3081]", "data.global_size=32"])
    out = tmp_path / "export" / "backbone.safetensors"
    info = export_backbone(ckpt, out, which=which)
    side = json.loads((tmp_path / "export" / "backbone.json").read_text())
    assert side["arch"] == "vit_tiny_patch16_224" and side["source"]["which"] == which
    assert side["arch_kwargs"]["patch_size"] == 8 and side["source"]["checkpoint"] == str(ckpt)
    assert info["num_features"] == 192

    # what a user types, with nothing from dino-pipe: plain timm + the sidecar's kwargs
    model = timm.create_model(side["arch"], pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(out)), **side["arch_kwargs"]).eval()
    ours = load_backbone(ckpt, which).model
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), ours(x), atol=1e-5)
        assert torch.allclose(load_exported(out)(x), ours(x), atol=1e-5)
        # and it is really the trained weights, not timm's random init
        fresh = timm.create_model(side["arch"], pretrained=False, num_classes=0, **side["arch_kwargs"]).eval()
        assert not torch.allclose(fresh(x), ours(x), atol=1e-3)
    keys = set(load_file(str(out)))
    # the normalisation the run trained with travels in the pretrained config: timm's data config reports it
    assert side["pretrained_cfg"]["mean"] == pytest.approx([0.1307] * 3) and side["pretrained_cfg"]["input_size"] == [
        3,
        32,
        32,
    ]
    user = timm.create_model(side["arch"], pretrained=True, num_classes=0,
                             pretrained_cfg_overlay=side["pretrained_cfg"], **side["arch_kwargs"])
    data_cfg = timm.data.resolve_data_config({}, model=user)
    assert tuple(data_cfg["mean"]) == pytest.approx((0.1307,) * 3)
    assert tuple(data_cfg["std"]) == pytest.approx((0.3081,) * 3) and tuple(data_cfg["input_size"]) == (3, 32, 32)
    assert keys == set(fresh.state_dict()) and not any(k.startswith(("backbone.", "head.")) for k in keys)


def test_export_errors(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        export_backbone(tmp_path / "none.pt", tmp_path / "x.safetensors")
    ckpt = write_tiny_checkpoint(tmp_path / "run")
    with pytest.raises(UserError, match=".safetensors"):
        export_backbone(ckpt, tmp_path / "x.pt")


def test_random_init_builds_the_overridden_model_section(tmp_path):
    """`eval --random-init` with a model override builds that model (the fair ResNet baseline needs
    model.arch_kwargs={zero_init_last: false}); trained weights always use the checkpoint's own config."""
    from dino_pipe.config import ModelConfig
    from dino_pipe.eval.trained_backbone import load_backbone

    ckpt = write_tiny_checkpoint(tmp_path, depth=2)
    other = ModelConfig(arch="vit_tiny_patch16_224", arch_kwargs={"img_size": 32, "patch_size": 8, "depth": 1})
    assert len(load_backbone(ckpt, random_init=True, random_model=other).model.blocks) == 1
    assert len(load_backbone(ckpt, random_init=False, random_model=other).model.blocks) == 2
