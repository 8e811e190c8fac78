"""Attention maps: the hook's recomputation equals timm's own attention, shapes for patch 16/8 and odd
sizes, maps sum to 1, the mass threshold, and the PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from eval_helpers import write_tiny_checkpoint
from PIL import Image

from dino_pipe.errors import UserError
from dino_pipe.eval.attention import cls_attention, crop_to_patches, highlight_mask, mass_mask, render_attention


def _vit(patch: int, **kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=patch,
                             depth=2, dynamic_img_size=True, **kw).eval()


def _reference_attention(model, x):
    """Unfused attention of the last block, written out: softmax(q k^T * scale) over all tokens."""
    attn = model.blocks[-1].attn
    tokens = model._pos_embed(model.patch_embed(x))
    tokens = model.norm_pre(tokens)
    for blk in model.blocks[:-1]:
        tokens = blk(tokens)
    h = model.blocks[-1].norm1(tokens)
    b, n, c = h.shape
    qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    full = (qkv[0] @ qkv[1].transpose(-2, -1) * attn.scale).softmax(-1)  # [B, H, N, N]
    return full[:, :, 0, model.num_prefix_tokens:]


@pytest.mark.parametrize("patch,size", [(16, (64, 48)), (8, (40, 56)), (8, (32, 32))])
def test_maps_match_unfused_attention_and_sum_to_one(patch, size):
    model = _vit(patch)
    x = torch.randn(2, 3, *size)
    maps = cls_attention(model, x)
    assert maps.shape == (2, 3, size[0] // patch, size[1] // patch)  # vit_tiny: 3 heads
    assert torch.allclose(maps.sum(dim=(-2, -1)), torch.ones(2, 3), atol=1e-5)
    ref = _reference_attention(model, x)
    ref = ref / ref.sum(-1, keepdim=True)
    assert torch.allclose(maps.flatten(-2), ref, atol=1e-5)


def test_register_tokens_are_not_patches():
    model = _vit(8, reg_tokens=4)
    maps = cls_attention(model, torch.randn(1, 3, 32, 48))
    assert maps.shape == (1, 3, 4, 6) and torch.allclose(maps.sum(dim=(-2, -1)), torch.ones(1, 3), atol=1e-5)


def test_odd_image_sizes_are_cropped_to_the_patch_grid():
    img = np.zeros((37, 45, 3), np.uint8)
    assert crop_to_patches(img, 8).shape == (32, 40, 3)
    assert crop_to_patches(img, 16).shape == (32, 32, 3)
    with pytest.raises(UserError, match="smaller than one"):
        crop_to_patches(np.zeros((7, 30, 3), np.uint8), 8)


def test_mass_mask_keeps_the_fewest_cells_holding_the_share():
    m = torch.tensor([[0.5, 0.05], [0.3, 0.15]])
    assert mass_mask(m, 0.6).tolist() == [[True, False], [True, False]]  # 0.5 + 0.3 >= 0.6
    assert mass_mask(m, 0.5).tolist() == [[True, False], [False, False]]
    assert mass_mask(m, 1.0).all()
    g = torch.rand(3, 5, 7)
    g = g / g.sum(dim=(-2, -1), keepdim=True)
    mask = mass_mask(g, 0.6)
    kept = (g * mask).sum(dim=(-2, -1))
    assert (kept >= 0.6 - 1e-6).all()
    smallest_kept = torch.where(mask, g, torch.full_like(g, 2.0)).flatten(1).min(1).values
    assert (kept - smallest_kept < 0.6).all()  # without its weakest cell the mask would fall short


def test_render_writes_pngs_for_any_image_size(tmp_path, photos):
    ckpt = write_tiny_checkpoint(tmp_path / "run", patch=8)
    paths = []
    for i, (w, h) in enumerate([(50, 37), (64, 64)]):
        p = tmp_path / f"img{i}.jpg"
        Image.fromarray(photos[i]).resize((w, h)).save(p)
        paths.append(p)
    res = render_attention(ckpt, paths, tmp_path / "out", size=0, threshold=0.6)
    first = res["images"][0]
    assert (first["height"], first["width"]) == (32, 48) and first["grid"] == [4, 6] and first["heads"] == 3
    for entry in res["images"]:
        png = Image.open(entry["png"])
        assert png.format == "PNG" and png.size[0] > 300
        assert all(0 < s <= 1 for s in entry["share_of_patches_for_mass"])
    res = render_attention(ckpt, paths[:1], tmp_path / "out2", size=96, threshold=None)
    assert min(res["images"][0]["height"], res["images"][0]["width"]) == 96
    with pytest.raises(UserError, match="image not found"):
        render_attention(ckpt, [tmp_path / "nope.jpg"], tmp_path / "out3")
    # default size: the run's training size (data.global_size, 224 in this checkpoint); another size: a note
    res = render_attention(ckpt, paths[1:], tmp_path / "out4", threshold=None)
    assert res["size"] == res["trained_size"] == 224 and res["note"] is None
    assert min(res["images"][0]["height"], res["images"][0]["width"]) == 224
    # a run trained at 32 px with 8-px patches (4 x 4 patches: a map of 16 cells shows nothing) is drawn at 224 px
    # by default (28 x 28 patches), and the note says why; --size 32 draws at the training size
    small = write_tiny_checkpoint(tmp_path / "run32", patch=8, extra=["data.global_size=32"])
    res = render_attention(small, paths[1:], tmp_path / "out5")
    assert res["trained_size"] == 32 and res["size"] == 224 and min(res["images"][0]["grid"]) == 28
    assert "28 patches a side instead of the 4" in res["note"] and "--size 32" in res["note"]
    res = render_attention(small, paths[1:], tmp_path / "out6", size=32, threshold=None)
    assert res["size"] == 32 and res["note"] is None and res["images"][0]["grid"] == [4, 4]
    res = render_attention(small, paths[1:], tmp_path / "out7", size=96, threshold=None)
    assert "a 12-patch side instead of the 4" in res["note"]


def test_default_size_and_titles_name_the_class():
    from dino_pipe.eval.attention import default_size, image_label

    assert default_size(224, 16) == 224 and default_size(32, 8) == 224 and default_size(32, 4) == 224
    assert default_size(480, 8) == 480 and default_size(64, 16) == 224
    classes = {"3": "3", "class_0": "class_0", "n01440764": "tench"}
    assert image_label(Path("my/val/3/01504.png"), classes) == "class 3  (01504.png)"
    assert image_label(Path("x/n01440764/a.JPEG"), classes) == "tench  (a.JPEG)"
    assert image_label(Path("x/other/a.jpg"), classes) == "a.jpg"  # not a class of the run: the file name
    assert image_label(Path("my_images/val/dog/a.jpg"), {}) == "dog  (a.jpg)"  # no run classes: an image tree
    assert image_label(Path("photos/a.jpg"), {}) == "a.jpg"


def test_masked_row_shows_attention_on_a_black_background():
    image = np.zeros((16, 16, 3), dtype=np.uint8)  # black background ...
    image[4:12, 4:12] = 200  # ... around a bright square
    mask = np.zeros((16, 16))
    mask[:, :4] = 1  # a head attending to (part of) the background
    shown = highlight_mask(image, mask)
    assert shown[0, 0].sum() > 0.5  # attended black pixels are tinted, not black
    assert (shown[8, 8] < image[8, 8] / 255.0).all()  # unattended bright pixels are dimmed
    assert shown[8, 8].sum() < shown[0, 0].sum()
