"""How far the DALI views are from the reference torchvision/PIL views, measured.

Two measurements (``python -m dino_pipe.data.fidelity SHARDSET [--images 96] [--json out.json]``):

* :func:`deviation_effects` isolates each deliberate deviation of the DALI graph (see
  :mod:`dino_pipe.data.graph`) on the same crops with the same random factors: torchvision's op
  vs the formula DALI computes (``tests/test_data_augment.py`` checks DALI against these formulas
  to +-1 grey level). Reported in grey levels (0..255): mean |pixel difference|, the mean shift of
  the view's mean, and the spread of that shift across views.
* :func:`resize_filter_effects` runs DALI's crop resize for each ``data.interp`` against PIL
  bicubic on the same crop windows (grey levels, per view kind).
* :func:`view_statistics` runs both whole pipelines over the same shard set and compares, per view
  kind, the per-channel mean and std of the normalized pixels and the spread of per-view means.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from dino_pipe.config import DataConfig
from dino_pipe.data.shardset import open_shardset

RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
YIQ2RGB = np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.107, 1.705]])


def color_twist(x: np.ndarray, brightness=1.0, contrast=1.0, saturation=1.0, hue_deg=0.0) -> np.ndarray:
    """DALI ``color_twist`` on HWC 0..255: ``B (C (YIQ2RGB R(h) S(s) RGB2YIQ x - 128) + 128)``, one clip."""
    h = math.radians(hue_deg)
    rot = np.array([[1, 0, 0], [0, math.cos(h), math.sin(h)], [0, -math.sin(h), math.cos(h)]])
    m = brightness * contrast * YIQ2RGB @ rot @ np.diag([1.0, saturation, saturation]) @ RGB2YIQ
    return np.clip(np.round(x.astype(np.float64) @ m.T + (128 - 128 * contrast) * brightness), 0, 255)


def dali_jitter(x: np.ndarray, brightness=1.0, contrast=1.0, saturation=1.0, hue_deg=0.0) -> np.ndarray:
    """The default DALI jitter (``data.contrast_center="mean"``): ``y = M(h, s) x`` (saturation + YIQ
    hue, float), then ``B (m + C (y - m))`` about the input's mean luma ``m``, rounded and clipped once."""
    h = math.radians(hue_deg)
    rot = np.array([[1, 0, 0], [0, math.cos(h), math.sin(h)], [0, -math.sin(h), math.cos(h)]])
    y = x.astype(np.float64) @ (YIQ2RGB @ rot @ np.diag([1.0, saturation, saturation]) @ RGB2YIQ).T
    m = (x.astype(np.float64) @ RGB2YIQ[0]).mean()
    return np.clip(np.round(brightness * (m + contrast * (y - m))), 0, 255)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """DALI ``gaussian_blur``: separable Gaussian, radius ``ceil(3 sigma)``, reflect-101 borders."""
    r = math.ceil(3 * sigma)
    t = np.arange(-r, r + 1)
    w = np.exp(-(t**2) / (2 * sigma**2))
    w /= w.sum()
    pad = np.pad(x.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(w[i] * pad[i : i + x.shape[0]] for i in range(2 * r + 1))
    return np.clip(np.round(sum(w[i] * rows[:, i : i + x.shape[1]] for i in range(2 * r + 1))), 0, 255)


def _images(shardset, n: int) -> list[Image.Image]:
    shards = open_shardset(shardset)
    out = []
    for tar in shards.tars:
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".jpg"):
                    out.append(Image.open(io.BytesIO(t.extractfile(m).read())).convert("RGB"))
                    if len(out) >= n:
                        return out
    return out


def _summary(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Reference vs DALI-semantics outputs -> grey-level differences."""
    mad = [np.abs(a.astype(np.float64) - b).mean() for a, b in pairs]
    shift = [b.mean() - a.astype(np.float64).mean() for a, b in pairs]
    std_shift = [b.std() - a.astype(np.float64).std() for a, b in pairs]
    return {"mean_abs_pixel_diff": round(float(np.mean(mad)), 2),
            "view_mean_shift": round(float(np.mean(shift)), 2),
            "view_mean_shift_spread": round(float(np.std(shift)), 2),
            "view_std_shift": round(float(np.mean(std_shift)), 2), "views": len(pairs)}


def deviation_effects(shardset, cfg: DataConfig | None = None, n_views: int = 200, size: int = 112,
                      seed: int = 0) -> dict:
    """Each deliberate deviation alone, on the same crops and factors (grey levels, 0..255)."""
    from torchvision import transforms as T

    cfg = cfg or DataConfig()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    imgs = _images(shardset, 64)
    crop = T.RandomResizedCrop(size, scale=cfg.global_scale, interpolation=T.InterpolationMode.BICUBIC)
    crops = [crop(imgs[i % len(imgs)]) for i in range(n_views)]
    b, c, s, h = cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue
    draws = [(rng.uniform(1 - b, 1 + b), rng.uniform(1 - c, 1 + c), rng.uniform(1 - s, 1 + s), rng.uniform(-h, h),
              rng.sample(range(4), 4)) for _ in crops]
    out = _colour_deviations(crops, draws)
    out.update(_blur_deviation(crops, [rng.uniform(*cfg.blur_sigma) for _ in crops]))
    out.update(_interp_deviation(imgs, cfg))
    return out


def _tv_jitter(img: Image.Image, bf: float, cf: float, sf: float, hf: float, order) -> np.ndarray:
    """torchvision's ``ColorJitter`` with the given factors, ops in ``order`` (0 brightness, 1 contrast,
    2 saturation, 3 hue), clipping after each."""
    import torchvision.transforms.functional as TF

    for k in order:
        img = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)[k](
            img, (bf, cf, sf, hf)[k]
        )
    return np.asarray(img)


def _colour_deviations(crops: list[Image.Image], draws: list[tuple]) -> dict:
    """The jitter's deviations (order, contrast centre, YIQ hue, the whole jitter) and grayscale's, each
    torchvision's op vs the formula DALI computes, on the same crops and factors ``draws``."""
    import torchvision.transforms.functional as TF

    out = {}
    # 1. fixed order (saturation, hue, contrast, brightness) vs torchvision's random order; torchvision ops
    out["jitter_fixed_order"] = _summary(
        [
            (_tv_jitter(im, *d[:4], d[4]), _tv_jitter(im, *d[:4], [2, 3, 1, 0]).astype(np.float64))
            for im, d in zip(crops, draws)
        ]
    )
    # 2. contrast centred at 128 vs at the image's mean grey level
    out["contrast_centre_128"] = _summary(
        [
            (np.asarray(TF.adjust_contrast(im, d[1])), color_twist(np.asarray(im), contrast=d[1]))
            for im, d in zip(crops, draws)
        ]
    )
    # 3. hue as a YIQ rotation vs an HSV hue shift
    out["hue_yiq_rotation"] = _summary(
        [
            (np.asarray(TF.adjust_hue(im, d[3])), color_twist(np.asarray(im), hue_deg=360 * d[3]))
            for im, d in zip(crops, draws)
        ]
    )
    # 4. the whole jitter: torchvision ColorJitter (random order, clip per op) vs the DALI graph's
    #    jitter (default: contrast about the mean grey) and vs a single 128-centred color_twist
    out["jitter_total"] = _summary(
        [
            (_tv_jitter(im, *d[:4], d[4]), dali_jitter(np.asarray(im), d[0], d[1], d[2], 360 * d[3]))
            for im, d in zip(crops, draws)
        ]
    )
    out["jitter_total_centre_128"] = _summary(
        [
            (_tv_jitter(im, *d[:4], d[4]), color_twist(np.asarray(im), d[0], d[1], d[2], 360 * d[3]))
            for im, d in zip(crops, draws)
        ]
    )
    # 4b. brightness + contrast only (no hue): what remains is order and clipping
    out["brightness_contrast_only"] = _summary(
        [
            (_tv_jitter(im, d[0], d[1], 1.0, 0.0, d[4]), dali_jitter(np.asarray(im), d[0], d[1]))
            for im, d in zip(crops, draws)
        ]
    )
    # 5. grayscale folded into the twist (saturation 0) vs PIL convert("L")
    out["grayscale_via_saturation_0"] = _summary(
        [(np.asarray(im.convert("L").convert("RGB")), color_twist(np.asarray(im), saturation=0.0)) for im in crops]
    )
    return out


def _blur_deviation(crops: list[Image.Image], sigmas: list[float]) -> dict:
    """6. Gaussian blur: true Gaussian (DALI) vs PIL's box-blur approximation, on the first 80 crops."""
    return {"blur_gaussian_vs_pil": _summary(
        [
            (np.asarray(im.filter(ImageFilter.GaussianBlur(radius=sg))), gaussian_blur(np.asarray(im), sg))
            for im, sg in zip(crops[:80], sigmas)
        ]
    )}


def _interp_deviation(imgs: list[Image.Image], cfg: DataConfig) -> dict:
    """7. resize filter: PIL bicubic (reference) vs PIL bilinear (the data.interp="linear" option's filter), on
    local-crop windows of the first 40 images."""
    from torchvision import transforms as T

    boxes = [(im, T.RandomResizedCrop.get_params(im, list(cfg.local_scale), [3 / 4, 4 / 3])) for im in imgs[:40]]
    pil = lambda im, b, f: np.asarray(im.crop((b[1], b[0], b[1] + b[3], b[0] + b[2])).resize((cfg.local_size,) * 2, f))  # noqa: E731
    return {"interp_linear_vs_bicubic": _summary(
        [(pil(im, b, Image.BICUBIC), pil(im, b, Image.BILINEAR).astype(np.float64)) for im, b in boxes]
    )}


def resize_filter_effects(shardset, cfg: DataConfig | None = None, n_views: int = 192, seed: int = 0,
                          filters: tuple[str, ...] = ("cubic", "gaussian", "linear")) -> dict:
    """DALI's crop resize (each ``data.interp``) vs PIL bicubic (the reference) on the same crop windows.

    Windows are drawn as torchvision's ``RandomResizedCrop`` does (1 in 6 a global view, the rest
    local, as in 2 + 10 multi-crop); PIL crops then resizes bicubic, DALI resizes the same ROI of
    the whole image exactly as the training graph does. Grey levels (0..255) per view kind, plus
    ``view_std_shift`` (negative: the DALI views are softer than PIL's).
    """
    from nvidia.dali import fn, pipeline_def
    from torchvision import transforms as T

    from dino_pipe.data.graph import resize_filters

    cfg = cfg or DataConfig()
    random.seed(seed)
    torch.manual_seed(seed)
    imgs = _images(shardset, 64)
    cases = []
    for k in range(n_views):
        im = imgs[k % len(imgs)]
        size, scale = (cfg.global_size, cfg.global_scale) if k % 6 == 0 else (cfg.local_size, cfg.local_scale)
        box = T.RandomResizedCrop.get_params(im, list(scale), list(cfg.aspect_ratio))  # top, left, h, w
        cases.append((np.asarray(im), box, size))
    pil = [np.asarray(Image.fromarray(a).crop((j, i, j + w, i + h)).resize((s, s), Image.BICUBIC))
           for a, (i, j, h, w), s in cases]

    def dali(interp: str) -> list[np.ndarray]:
        @pipeline_def
        def resize_pipe():
            img, start, end, size = (fn.external_source(name=n) for n in ("img", "start", "end", "size"))
            return fn.resize(img, size=size, roi_start=start, roi_end=end, roi_relative=False, antialias=True,
                             **resize_filters(interp))

        pipe = resize_pipe(batch_size=len(cases), num_threads=1, device_id=None)
        pipe.build()
        pipe.feed_input("img", [c[0] for c in cases], layout="HWC")
        pipe.feed_input("start", [np.array(c[1][:2], np.float32) for c in cases])
        pipe.feed_input("end", [np.array([c[1][0] + c[1][2], c[1][1] + c[1][3]], np.float32) for c in cases])
        pipe.feed_input("size", [np.array([c[2], c[2]], np.float32) for c in cases])
        (out,) = pipe.run()
        return [np.array(out[k]) for k in range(len(cases))]

    result = {}
    for interp in filters:
        views = dali(interp)
        kinds = {"global": [], "local": []}
        for (_, _, size), a, b in zip(cases, pil, views):
            kinds["global" if size == cfg.global_size else "local"].append((a, b.astype(np.float64)))
        result[interp] = {kind: _summary(pairs) for kind, pairs in kinds.items()}
        result[interp]["all"] = _summary(kinds["global"] + kinds["local"])
    return result


def _view_moments(views: list[torch.Tensor]) -> dict:
    x = torch.cat([v.float() for v in views])  # [n, 3, H, W]
    per_view_mean = x.mean(dim=(1, 2, 3))
    return {"channel_mean": [round(v, 4) for v in x.mean(dim=(0, 2, 3)).tolist()],
            "channel_std": [round(v, 4) for v in x.std(dim=(0, 2, 3)).tolist()],
            "view_mean_spread": round(per_view_mean.std().item(), 4), "views": len(x)}


def view_statistics(shardset, cfg: DataConfig | None = None, epochs: int = 4, n_local: int = 2,
                    batch_size: int = 16, seed: int = 0) -> dict:
    """Per view kind (each global view by name, then the locals together): DALI vs reference moments of the
    normalized views."""
    from dino_pipe.data.loader import ViewLoader
    from dino_pipe.data.reference import MultiCropTransform

    cfg = cfg or DataConfig()
    loader = ViewLoader(shardset, cfg, batch_size=batch_size, n_local=n_local, seed=seed)
    kinds = [spec.name for spec in loader.specs if spec.is_global]  # global1, global2, ... (they come first)
    dali: dict[str, list] = {kind: [] for kind in kinds + ["local"]}
    ref: dict[str, list] = {kind: [] for kind in kinds + ["local"]}
    for _ in range(epochs):
        for batch in loader:
            _add_views(dali, kinds, batch.views)
    loader.close()
    n_imgs = loader.num_samples
    random.seed(seed)
    torch.manual_seed(seed)
    transform = MultiCropTransform(cfg, n_local)
    for _ in range(epochs):
        for img in _images(shardset, n_imgs):
            _add_views(ref, kinds, [v[None] for v in transform(img)])
    return {kind: {"dali": _view_moments(dali[kind]), "reference": _view_moments(ref[kind])} for kind in dali}


def _add_views(store: dict[str, list], kinds: list[str], views: list) -> None:
    """File one image's (or batch's) views under their kind: the global views by name, the rest as "local"."""
    for kind, view in zip(kinds, views):
        store[kind].append(view)
    store["local"].extend(views[len(kinds):])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="DALI vs reference augmentation statistics")
    ap.add_argument("shardset", type=Path)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=96)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    cfg = DataConfig(global_size=args.global_size, local_size=args.local_size)
    result = {"deviation_effects_grey_levels": deviation_effects(args.shardset, cfg),
              "resize_filters_vs_pil_bicubic_grey_levels": resize_filter_effects(args.shardset, cfg),
              "view_statistics_normalized": view_statistics(args.shardset, cfg, epochs=args.epochs)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
