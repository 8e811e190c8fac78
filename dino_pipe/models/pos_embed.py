"""How a ViT's position table is resized for crops of another size (e.g. 96-px local crops).

With ``dynamic_img_size`` timm resamples the patch position table to the crop's grid with
*antialiased* bicubic interpolation to an exact output size. The reference DINO (and DINOv2)
use *plain* bicubic interpolation driven by a scale factor ``(n + 0.1) / N`` per side (``n``:
the crop's patches per side, ``N``: the table's); the 0.1 only guards the output size against
floating-point error, but with a scale factor given PyTorch also maps output to input
coordinates through that factor, so the values differ slightly from a resize to ``n`` exactly.

``model.pos_interp``: ``reference`` (default, the formula above) or ``timm`` (timm's resampling).
Views whose grid equals the table's (the 224-px globals of a 224 ViT) use the table as is either way.
"""

from __future__ import annotations

import types

import torch
import torch.nn as nn
import torch.nn.functional as F

POS_INTERP = ("reference", "timm")


def resample_reference(pos_embed: torch.Tensor, new_size: tuple[int, int], old_size: tuple[int, int],
                       num_prefix_tokens: int = 1) -> torch.Tensor:
    """``pos_embed [1, prefix + Ho*Wo, C]`` resized to ``new_size`` (rows, cols) as the reference DINO does."""
    h, w = int(new_size[0]), int(new_size[1])
    ho, wo = int(old_size[0]), int(old_size[1])
    if (h, w) == (ho, wo):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    dtype = grid.dtype
    grid = grid.float().reshape(1, ho, wo, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / ho, (w + 0.1) / wo), mode="bicubic", align_corners=False)
    if grid.shape[-2:] != (h, w):  # cannot happen for n + 0.1 >= 1; a clear error instead of a shape mismatch
        raise RuntimeError(f"position table resized to {tuple(grid.shape[-2:])}, expected {(h, w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(dtype)
    return torch.cat([prefix, grid], dim=1) if num_prefix_tokens else grid


def _reference_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` with :func:`resample_reference` for other grid sizes."""
    if self.pos_embed is None or not self.dynamic_img_size:
        return self._timm_pos_embed(x)
    to_cat = []
    if self.cls_token is not None:
        to_cat.append(self.cls_token.expand(x.shape[0], -1, -1))
    if getattr(self, "reg_token", None) is not None:
        to_cat.append(self.reg_token.expand(x.shape[0], -1, -1))
    b, h, w, c = x.shape
    prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    pos = resample_reference(self.pos_embed, (h, w), tuple(self.patch_embed.grid_size), prefix)
    x = x.view(b, -1, c)
    if self.no_embed_class:
        x = x + pos
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
    else:
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
        x = x + pos
    return self.pos_drop(x)


def use_reference_resampling(model: nn.Module) -> nn.Module:
    """Make a timm ViT resize its position table as the reference DINO does (no-op for other models)."""
    if not (hasattr(model, "_pos_embed") and hasattr(model, "pos_embed") and hasattr(model, "patch_embed")):
        return model
    model._timm_pos_embed = model._pos_embed
    model._pos_embed = types.MethodType(_reference_pos_embed, model)
    return model
