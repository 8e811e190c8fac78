"""The multi-crop view recipe as data: one :class:`ViewSpec` per view (2 global + N local).

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
"""

from __future__ import annotations

from dataclasses import dataclass

from dino_pipe.config import DataConfig


@dataclass(frozen=True)
class ViewSpec:
    """One view of the multi-crop recipe: output size and the probability/range of every augmentation."""

    name: str
    size: int
    scale: tuple[float, float]
    aspect_ratio: tuple[float, float]
    flip_p: float
    jitter_p: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale_p: float
    blur_p: float
    blur_sigma: tuple[float, float]
    solarize_p: float
    interp: str = "cubic"

    @property
    def is_global(self) -> bool:
        return self.name.startswith("global")


def multicrop_recipe(cfg: DataConfig, n_local: int | None = None) -> list[ViewSpec]:
    """``[global1, global2, local1, ..., localN]`` from ``cfg`` (``n_local`` overrides ``cfg.n_local``)."""
    n = cfg.n_local if n_local is None else int(n_local)
    common = dict(aspect_ratio=tuple(cfg.aspect_ratio), flip_p=cfg.flip_p, jitter_p=cfg.jitter_p,
                  brightness=cfg.brightness, contrast=cfg.contrast, saturation=cfg.saturation, hue=cfg.hue,
                  grayscale_p=cfg.grayscale_p, blur_sigma=tuple(cfg.blur_sigma), interp=cfg.interp)
    views = [
        ViewSpec(name=f"global{i + 1}", size=cfg.global_size, scale=tuple(cfg.global_scale),
                 blur_p=cfg.blur_p_global[i], solarize_p=cfg.solarize_p_global[i], **common)
        for i in range(2)
    ]
    views += [
        ViewSpec(name=f"local{i + 1}", size=cfg.local_size, scale=tuple(cfg.local_scale),
                 blur_p=cfg.blur_p_local, solarize_p=cfg.solarize_p_local, **common)
        for i in range(n)
    ]
    return views
