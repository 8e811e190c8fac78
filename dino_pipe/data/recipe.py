"""The multi-crop view recipe as data: one :class:`ViewSpec` per view (G global + N local).

The reference DINO augmentation (Caron et al. 2021, ``DataAugmentationDINO``) in spec form:

============  =======  ============  =====  ========  =========  =====  ============
view          size     scale         flip   jitter    grayscale  blur   solarize
============  =======  ============  =====  ========  =========  =====  ============
global 1      224      (0.4, 1.0)    0.5    0.8       0.2        1.0    0.0
global 2      224      (0.4, 1.0)    0.5    0.8       0.2        0.1    0.2
local 1..N    96       (0.05, 0.4)   0.5    0.8       0.2        0.5    0.0
============  =======  ============  =====  ========  =========  =====  ============

Every view: random resized crop (area fraction ``U(scale)``, aspect ratio log-uniform in
``aspect_ratio``; the reference resizes bicubic, the DALI graph by default with an antialiased
Gaussian when shrinking and cubic when enlarging, ``data.interp``: see :mod:`dino_pipe.data.graph`),
horizontal flip, colour jitter (brightness/contrast factors
``U[1-b, 1+b]``, saturation ``U[1-s, 1+s]``, hue shift ``U[-h, h]`` of a full turn), grayscale,
Gaussian blur with sigma ``U(blur_sigma)``, solarization (``x >= 128 -> 255 - x``), then
``(x / 255 - mean) / std`` as float CHW. The DALI graph (:mod:`dino_pipe.data.graph`) and the
reference PIL/torchvision loader (:mod:`dino_pipe.data.reference`) are both built from this list.

The number of global views ``G`` (2 in DINO) is the number of entries of ``data.blur_p_global`` and
``data.solarize_p_global`` (one per global view); everything downstream (the loader's views, the teacher's
inputs, the DINO loss's teacher views, KoLeo) reads it from the recipe through :func:`n_global_views`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from dino_pipe.config import DataConfig


@dataclass(frozen=True)
class ViewSpec:
    """One view of the multi-crop recipe: output size and the probability/range of every augmentation.

    Every augmentation defaults to "off" (probability 0, strength 0, the whole image at its own aspect ratio),
    so a spec names only what it does: ``ViewSpec("probe", 224, scale=(0.08, 1.0), flip_p=0.5)``."""

    name: str
    size: int
    scale: tuple[float, float] = (1.0, 1.0)
    aspect_ratio: tuple[float, float] = (1.0, 1.0)
    flip_p: float = 0.0
    jitter_p: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    interp: str = "cubic"

    @property
    def is_global(self) -> bool:
        """A global view: the teacher sees it (named ``global<i>`` by :func:`multicrop_recipe`)."""
        return self.name.startswith("global")


def n_global_views(specs: Sequence[ViewSpec]) -> int:
    """The number of global views of a recipe (they come first): the teacher's views, the DINO loss's teacher
    views, KoLeo's views."""
    return sum(spec.is_global for spec in specs)


def multicrop_recipe(cfg: DataConfig, n_local: int | None = None) -> list[ViewSpec]:
    """``[global1, ..., globalG, local1, ..., localN]`` from ``cfg``: one global view per entry of
    ``cfg.blur_p_global`` / ``cfg.solarize_p_global`` (``n_local`` overrides ``cfg.n_local``)."""
    n = cfg.n_local if n_local is None else int(n_local)
    common = dict(aspect_ratio=tuple(cfg.aspect_ratio), flip_p=cfg.flip_p, jitter_p=cfg.jitter_p,
                  brightness=cfg.brightness, contrast=cfg.contrast, saturation=cfg.saturation, hue=cfg.hue,
                  grayscale_p=cfg.grayscale_p, blur_sigma=tuple(cfg.blur_sigma), interp=cfg.interp)
    views = [
        ViewSpec(name=f"global{i + 1}", size=cfg.global_size, scale=tuple(cfg.global_scale),
                 blur_p=blur_p, solarize_p=solarize_p, **common)
        for i, (blur_p, solarize_p) in enumerate(zip(cfg.blur_p_global, cfg.solarize_p_global, strict=True))
    ]
    views += [
        ViewSpec(name=f"local{i + 1}", size=cfg.local_size, scale=tuple(cfg.local_scale),
                 blur_p=cfg.blur_p_local, solarize_p=cfg.solarize_p_local, **common)
        for i in range(n)
    ]
    return views
