"""Where the CLS token looks: last-layer self-attention maps of a ViT, per head, as pictures.

For the last block's attention (input tokens ``x`` ``[B, N, C]`` after its first norm, ``H``
heads of size ``d``), head ``h``'s attention from the CLS token is

    a_h = softmax(q_h[CLS] . k_h^T / sqrt(d))            over all N tokens

timm computes attention with fused SDPA, which returns no weights, so a forward pre-hook on the
block's ``attn`` module keeps ``x`` and :func:`cls_attention` recomputes ``q`` (the CLS row only:
memory ``O(N)`` per head, any image size) and ``k`` from the module's own ``qkv`` projection.
The maps are ``a_h`` restricted to the patch tokens and renormalized to sum to 1 over the patches
(a distribution over the image), shape ``[B, H, h, w]`` with ``h, w`` = image size / patch.

:func:`mass_mask` keeps, per head, the most-attended patches that together hold a given share of
the mass (``threshold=0.6`` as in the reference ``visualize_attention``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dino_pipe.atomic import atomic_write_json
from dino_pipe.errors import UserError
from dino_pipe.models.backbone import patch_size


def _last_attention(model: nn.Module) -> nn.Module:
    blocks = getattr(model, "blocks", None)
    attn = getattr(blocks[-1], "attn", None) if blocks is not None and len(blocks) else None
    if attn is None or not hasattr(attn, "qkv") or not hasattr(attn, "num_heads"):
        raise UserError(f"{type(model).__name__}: attention maps need a timm ViT whose blocks have attn.qkv "
                        "(CNN backbones have no attention)")
    return attn


@torch.no_grad()
def cls_attention(model: nn.Module, images: Tensor) -> Tensor:
    """CLS-to-patch attention of the last block: ``[B, 3, H_img, W_img]`` -> ``[B, heads, h, w]``.

    ``H_img`` and ``W_img`` must be multiples of the patch size (see :func:`crop_to_patches`).
    Each ``[h, w]`` map sums to 1.
    """
    p = patch_size(model)
    if p is None:
        raise UserError("attention maps need a ViT backbone (this one has no patch embedding)")
    b, _, height, width = images.shape
    if height % p or width % p:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
    attn = _last_attention(model)
    kept: dict[str, Tensor] = {}

    def keep_input(_module, args, kwargs=None):
        kept["x"] = args[0] if args else kwargs["x"]

    handle = attn.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        model.forward_features(images)
    finally:
        handle.remove()
    x = kept["x"]
    n, heads = x.shape[1], attn.num_heads
    head_dim = attn.qkv.out_features // (3 * heads)
    qkv = attn.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, N, d]
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    scale = getattr(attn, "scale", head_dim ** -0.5)
    logits = (q[:, :, :1].float() * scale) @ k.float().transpose(-2, -1)  # [B, H, 1, N]
    weights = logits.softmax(dim=-1)[:, :, 0]  # [B, H, N]
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    patches = weights[:, :, prefix:]
    patches = patches / patches.sum(dim=-1, keepdim=True)
    return patches.reshape(b, heads, height // p, width // p)


def mass_mask(maps: Tensor, threshold: float) -> Tensor:
    """Per map, the fewest highest-valued cells holding at least ``threshold`` of the (unit) mass.

    ``maps`` ``[..., h, w]`` (each summing to 1) -> bool mask of the same shape.
    """
    flat = maps.flatten(-2)
    values, order = flat.sort(dim=-1, descending=True)
    before = values.cumsum(-1) - values  # mass of the cells ranked above this one
    keep_sorted = before < threshold
    mask = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return mask.reshape(maps.shape)


def crop_to_patches(image: np.ndarray, patch: int) -> np.ndarray:
    """Center-crop an ``[H, W, 3]`` image to multiples of ``patch`` (at least one patch)."""
    h, w = image.shape[:2]
    nh, nw = (h // patch) * patch, (w // patch) * patch
    if nh == 0 or nw == 0:
        raise UserError(f"image of {w}x{h} px is smaller than one {patch}x{patch} patch")
    top, left = (h - nh) // 2, (w - nw) // 2
    return image[top : top + nh, left : left + nw]


def read_image(path: str | Path, size: int, patch: int) -> np.ndarray:
    """An RGB ``[H, W, 3]`` uint8 image, shorter side resized to ``size`` (0 = as is), cropped to patches.

    The file goes through the checks ``dino-pipe shard`` applies (:func:`dino_pipe.shards.image.prepare_image`:
    size limit against decompression bombs, a full decode, EXIF rotation, RGB), so an image shard would
    skip ends here in one line, and the pixels drawn are those a shard would hold."""
    import io

    from PIL import Image

    from dino_pipe.shards.image import UnreadableImage, prepare_image

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: image not found") from None
    try:
        prepared = prepare_image(data, check="decode")
        with Image.open(io.BytesIO(prepared.data)) as im:
            im = im.convert("RGB")
            if size > 0:
                w, h = im.size
                s = size / min(w, h)
                im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
            arr = np.asarray(im)
    except (UnreadableImage, OSError) as e:
        raise UserError(f"{path}: not a usable image ({e}); `dino-pipe shard` would skip it too") from None
    return crop_to_patches(arr, patch)


def to_tensor(image: np.ndarray, mean, std) -> Tensor:
    """``[H, W, 3]`` uint8 -> normalized ``[1, 3, H, W]`` float."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(255.0)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x[None]


def upsample(maps: Tensor, patch: int) -> Tensor:
    """``[..., h, w]`` -> ``[..., h * patch, w * patch]`` (nearest: one block per patch)."""
    lead = maps.shape[:-2]
    up = F.interpolate(maps.reshape(1, -1, *maps.shape[-2:]).float(), scale_factor=patch, mode="nearest")
    return up.reshape(*lead, *up.shape[-2:])


# Row 2 of the grid: patches in a head's top-``threshold`` mass are tinted with this colour (so a
# head that attends to a black background shows an amber region, not black on black); the rest is dimmed.
HIGHLIGHT = np.array([1.0, 0.75, 0.1], dtype=np.float32)


def highlight_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 image + ``[H, W]`` 0/1 mask -> float RGB in [0, 1]: kept pixels tinted
    (60 % image + 40 % :data:`HIGHLIGHT`), the others dimmed to 25 %. Visible on any background."""
    rgb = image.astype(np.float32) / 255.0
    m = mask[..., None].astype(np.float32)
    kept = 0.6 * rgb + 0.4 * HIGHLIGHT
    return (m * kept + (1 - m) * 0.25 * rgb).clip(0, 1)


def save_attention_grid(
    path: str | Path, image: np.ndarray, maps: Tensor, patch: int, threshold: float | None, title: str = ""
) -> Path:
    """A PNG: row 1 = image, each head's map, the mean map; row 2 (with ``threshold``) = the image
    again, then per head (and the mean) the patches holding its top-``threshold`` mass tinted and
    the rest dimmed (:func:`highlight_mask`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dino_pipe.atomic import atomic_open

    heads = maps.shape[0]
    mean = maps.mean(0, keepdim=True)
    all_maps = torch.cat([maps, mean])  # [heads + 1, h, w]
    up = upsample(all_maps, patch).numpy()
    rows = 2 if threshold is not None else 1
    cols = heads + 2
    tile = 1.9  # inches per tile width; each row also gets room for its titles
    fig, axes = plt.subplots(rows, cols, squeeze=False, layout="constrained",
                             figsize=(tile * cols, rows * (tile * image.shape[0] / image.shape[1] + 0.35) + 0.4))
    names = [f"head {i}" for i in range(heads)] + ["mean"]
    axes[0][0].imshow(image)
    axes[0][0].set_title("image", fontsize=8)
    relative = up * all_maps[0].numel()  # attention per patch in multiples of the uniform share (1 = even)
    low, high = float(relative.min()), float(relative.max())  # one scale for all heads, so they compare
    for j, name in enumerate(names):
        shown = axes[0][j + 1].imshow(relative[j], cmap="inferno", interpolation="nearest", vmin=low, vmax=high)
        axes[0][j + 1].set_title(name, fontsize=8)
    bar = fig.colorbar(shown, ax=list(axes[0][1:]), shrink=0.9, pad=0.01, aspect=15)
    bar.set_label("attention per patch\n(× even share)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    if threshold is not None:
        masks = upsample(mass_mask(all_maps, threshold).float(), patch).numpy()
        axes[1][0].imshow(image)
        axes[1][0].set_title(f"image; right: top {threshold:.0%}\nof attention, tinted", fontsize=7)
        for j, name in enumerate(names):
            axes[1][j + 1].imshow(highlight_mask(image, masks[j]))
            axes[1][j + 1].set_title(f"{name}: top {threshold:.0%}\nin {masks[j].mean():.0%} of image", fontsize=7)
    for ax in np.ravel(axes):
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


#: ``viz attention`` draws at the training size when that gives at least this many patches a side, else at
#: :data:`DRAW_PX` (a 32-px run with 8-px patches has 4 x 4 patches: a map of 16 cells shows nothing)
MIN_PATCHES = 14
DRAW_PX = 224


def default_size(trained: int, patch: int) -> int:
    """The size ``viz attention`` draws at by default: the run's training size ``trained`` when it has at
    least :data:`MIN_PATCHES` patches a side, else :data:`DRAW_PX` px."""
    return trained if trained // patch >= MIN_PATCHES else max(DRAW_PX, MIN_PATCHES * patch)


def size_note(size: int, trained: int, patch: int, chosen: bool) -> str | None:
    """What the result says when the maps are drawn at another size than the run trained at (None when not):
    ``chosen`` = the default picked it (to show detail), else ``--size`` asked for it."""
    if not size or size == trained:
        return None
    why = (f"so the map has {size // patch} patches a side instead of the {trained // patch} of the run's "
           f"{trained}-px training crops, too few to show where it looks" if chosen else
           f"a {size // patch}-patch side instead of the {trained // patch} of the run's {trained}-px training crops")
    return f"drawn at {size} px on the shorter side ({why}; --size {trained} draws at the training size)"


def run_classes(cfg) -> dict[str, str]:
    """Folder name -> class name of the run's labelled training set, when the run names one (its online
    k-NN bank, ``eval.online_knn_train``) and that set's manifest is here; ``class_names`` (when the manifest
    has it, parallel to ``classes``) gives the display names. Empty when unknown."""
    from dino_pipe.shards.manifest import MANIFEST_NAME, read_manifest_file

    bank = Path(cfg.eval.online_knn_train) if cfg.eval.online_knn_train else None
    if bank is None or not (bank / MANIFEST_NAME).is_file():
        return {}
    try:
        manifest = read_manifest_file(bank / MANIFEST_NAME)
    except UserError:
        return {}
    classes = [str(c) for c in manifest.get("classes") or []]
    names = manifest.get("class_names")
    if isinstance(names, list) and len(names) == len(classes):
        return {c: str(n) for c, n in zip(classes, names)}
    if isinstance(names, dict):
        return {c: str(names.get(c, c)) for c in classes}
    return {c: c for c in classes}


def image_label(path: Path, classes: dict[str, str]) -> str:
    """The picture's title: ``class <name>`` when the image's folder is a class of the run's training set (or,
    with no set known, any folder of an image tree ``.../<class>/<file>``), with the file name beside it."""
    folder = path.parent.name
    if classes and folder in classes:
        name = classes[folder]
    elif not classes and path.parent.parent.name in ("train", "val", "test"):
        name = folder
    else:
        return path.name
    return f"{'class ' if name.isdigit() else ''}{name}  ({path.name})"


def render_attention(
    checkpoint: str | Path,
    images: list[str | Path],
    out: str | Path,
    *,
    which: str = "teacher",
    random_init: bool = False,
    size: int | None = None,
    threshold: float | None = 0.6,
    device: str = "cpu",
) -> dict[str, Any]:
    """Write ``OUT/<image stem>-attention.png`` for each image; return what was drawn.

    ``size``: shorter side in pixels before cropping to the patch grid; ``None`` = :func:`default_size` (the
    size the run trained its global crops at, ``data.global_size``, unless that gives fewer than
    :data:`MIN_PATCHES` patches a side), 0 = as is. Another
    size gives the model a patch grid it never trained on (finer maps for upscaled small images such
    as digits, near-uniform ones for photos shrunk to a tiny model's scale, depending on the data):
    the result then carries a ``note`` saying so, to compare with the default.

    The result records per image the size used and, per head, the share of patches that holds
    ``threshold`` of the attention (small = focused, near ``threshold`` = spread evenly).
    """
    from dino_pipe.eval.trained_backbone import load_backbone

    if not images:
        raise UserError("viz attention needs at least one IMAGE")
    if threshold is not None and not 0 < threshold <= 1:
        raise UserError(f"--threshold must be in (0, 1], got {threshold}")
    if size is not None and size < 0:
        raise UserError(f"--size must be >= 0 (0 keeps the image size), got {size}")
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: image not found")
    loaded = load_backbone(checkpoint, which, random_init=random_init, seed=0)
    model, cfg = loaded.model.to(device), loaded.config
    p = patch_size(model)
    if p is None:
        raise UserError(f"{cfg.model.arch}: attention maps need a ViT backbone")
    _last_attention(model)
    trained = int(cfg.data.global_size)
    note = size_note(default_size(trained, p) if size is None else size, trained, p, chosen=size is None)
    size = default_size(trained, p) if size is None else size
    pictures = [read_image(path, size, p) for path in images]  # every image checked before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drawn = []
    classes = run_classes(cfg)
    model_name = loaded.source["model"].split(" (")[0]  # "ViT patch 8, 4 blocks, 192-d" without timm's arguments
    for path, image in zip(images, pictures):
        maps = cls_attention(model, to_tensor(image, cfg.data.mean, cfg.data.std).to(device))[0].cpu()
        name = f"{Path(path).stem}-attention.png"
        label = image_label(Path(path), classes)
        title = (f"{label}\n{model_name}, {which}{' (random init)' if random_init else ''} at step "
                 f"{loaded.source['step']}; drawn at {image.shape[1]}x{image.shape[0]} px = {maps.shape[2]}x"
                 f"{maps.shape[1]} patches of {p} px (trained at {trained} px)")
        save_attention_grid(out / name, image, maps, p, threshold, title)
        entry = {
            "image": str(path),
            "label": label,
            "png": str(out / name),
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "grid": [int(maps.shape[1]), int(maps.shape[2])],
            "heads": int(maps.shape[0]),
        }
        if threshold is not None:
            entry["share_of_patches_for_mass"] = [round(float(m.float().mean()), 4) for m in mass_mask(maps, threshold)]
        drawn.append(entry)
    result = {"checkpoint": loaded.source, "patch_size": p, "threshold": threshold, "size": size,
              "trained_size": trained, "note": note, "images": drawn}
    atomic_write_json(out / "attention.json", result)
    return result

