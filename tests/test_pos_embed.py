"""Local-crop position embedding: the reference DINO formula by default, timm's resampling as an option."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dino_pipe.config import ModelConfig
from dino_pipe.models.backbone import create_backbone

# a 224-px ViT with a 14x14 position table (narrow and shallow: the table is what matters here)
VIT = dict(arch="vit_tiny_patch16_224", arch_kwargs={"embed_dim": 48, "num_heads": 2, "depth": 1})


def reference_table(pos_embed: torch.Tensor, w: int, h: int, patch: int) -> torch.Tensor:
    """The reference formula, written from its description: class position kept, the N patch
    positions reshaped to sqrt(N) x sqrt(N) and resized with plain bicubic by scale factor (n + 0.1) / sqrt(N)
    per side (rows by the height, columns by the width, as DINOv2; DINO only ever used square crops)."""
    n = pos_embed.shape[1] - 1
    side = int(math.sqrt(n))
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    grid = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(h0 / side, w0 / side), mode="bicubic")
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])], dim=1)


def pos_added(model, size: int) -> torch.Tensor:
    """What ``_pos_embed`` adds to the tokens of a ``size``-px image (class token subtracted out)."""
    with torch.no_grad():
        patches = model.patch_embed(torch.zeros(1, 3, size, size))
        out = model._pos_embed(patches)
        base = torch.cat([model.cls_token, patches.reshape(1, -1, patches.shape[-1])], dim=1)
        return out - base


def test_local_crops_use_the_reference_formula_by_default():
    torch.manual_seed(0)
    model = create_backbone(ModelConfig(**VIT)).eval()
    torch.nn.init.normal_(model.pos_embed, std=0.5)  # a random table, not timm's near-zero init
    added = pos_added(model, 96)
    assert added.shape == (1, 1 + 36, 48)
    torch.testing.assert_close(added, reference_table(model.pos_embed, 96, 96, 16), rtol=0, atol=1e-6)
    # and it is not what timm's antialiased resampling gives (so the test can tell them apart)
    timm_model = create_backbone(ModelConfig(**VIT, pos_interp="timm")).eval()
    timm_model.load_state_dict(model.state_dict())
    assert (pos_added(timm_model, 96) - added).abs().max() > 1e-2
    # the 224-px views use the table as is, either way
    torch.testing.assert_close(pos_added(model, 224), model.pos_embed.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(pos_added(timm_model, 224), model.pos_embed.detach(), rtol=0, atol=1e-6)


def test_non_square_grids_resize_rows_and_columns_by_their_own_factor():
    torch.manual_seed(0)
    model = create_backbone(ModelConfig(**VIT)).eval()
    torch.nn.init.normal_(model.pos_embed, std=0.5)
    with torch.no_grad():
        patches = model.patch_embed(torch.zeros(1, 3, 96, 160))
        out = model._pos_embed(patches)
    assert out.shape == (1, 1 + 6 * 10, 48)
    ref = reference_table(model.pos_embed, 160, 96, 16)
    torch.testing.assert_close(
        out - torch.cat([model.cls_token, patches.reshape(1, -1, 48)], 1), ref, rtol=0, atol=1e-6
    )


def test_pos_interp_is_validated():
    from dino_pipe.config import load_config
    from dino_pipe.errors import UserError

    with pytest.raises(UserError, match="model.pos_interp"):
        load_config(None, ["model.pos_interp=nearest"])
