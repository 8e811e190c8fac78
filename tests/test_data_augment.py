"""The DALI multi-crop augmentation: configured probabilities hold, and each view is what its flags claim.

Statistics use the ``debug=True`` flags over ~3000 small views. Pixel checks compare two loaders
with the same seed that differ in one augmentation: every random op has its own seed (derived from
the run seed and the op's name), so crops and the other draws are identical and the one difference
is the augmentation under test, which is then checked against a direct formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dino_pipe.config import DataConfig
from dino_pipe.data.graph import FLAG_NAMES
from dino_pipe.data.loader import ViewLoader

F = {name: i for i, name in enumerate(FLAG_NAMES)}
OFF = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p_global=(0.0, 0.0), blur_p_local=0.0,
           solarize_p_global=(0.0, 0.0))


@pytest.fixture(scope="module")
def flag_stats(tiny_shardset):
    """Flags of 4 epochs x 96 images x (2 global + 6 local) views -> {view index: [n, n_flags]}."""
    cfg = DataConfig(global_size=32, local_size=16, n_local=6, batch_size=32)
    loader = ViewLoader(tiny_shardset, cfg, debug=True, seed=5)
    per_view = {i: [] for i in range(8)}
    for _ in range(4):
        for batch in loader:
            for i, f in enumerate(batch.flags):
                per_view[i].append(f)
    return {i: torch.cat(v).double() for i, v in per_view.items()}


def _close(rate: float, p: float, n: int, z: float = 4.5) -> bool:
    return abs(rate - p) <= z * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9


def test_flip_jitter_grayscale_rates(flag_stats):
    allf = torch.cat(list(flag_stats.values()))
    n = len(allf)
    assert n >= 3000
    for name, p in (("flipped", 0.5), ("jittered", 0.8), ("grayscale", 0.2)):
        rate = allf[:, F[name]].mean().item()
        assert _close(rate, p, n), f"{name}: {rate:.3f} vs {p}"


def test_blur_rates_per_view(flag_stats):
    g1, g2 = flag_stats[0][:, F["blurred"]], flag_stats[1][:, F["blurred"]]
    locals_ = torch.cat([flag_stats[i][:, F["blurred"]] for i in range(2, 8)])
    assert g1.min() == 1.0, "global view 1 is always blurred"
    assert _close(g2.mean().item(), 0.1, len(g2))
    assert _close(locals_.mean().item(), 0.5, len(locals_))


def test_solarize_only_on_global_view_2(flag_stats):
    g2 = flag_stats[1][:, F["solarized"]]
    assert _close(g2.mean().item(), 0.2, len(g2))
    for i in [0, *range(2, 8)]:
        assert flag_stats[i][:, F["solarized"]].max() == 0.0


def test_blur_sigma_uniform_in_range(flag_stats):
    allf = torch.cat(list(flag_stats.values()))
    sig = allf[allf[:, F["blurred"]] == 1, F["sigma"]]
    assert sig.min() >= 0.1 - 1e-6 and sig.max() <= 2.0 + 1e-6
    assert abs(sig.mean().item() - 1.05) < 4.5 * (1.9 / math.sqrt(12)) / math.sqrt(len(sig))
    assert (allf[allf[:, F["blurred"]] == 0, F["sigma"]] == 0).all()


def test_jitter_factors_in_range_identity_when_off(flag_stats):
    allf = torch.cat(list(flag_stats.values()))
    on = allf[:, F["jittered"]] == 1
    for name, lo, hi in (("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4), ("hue_deg", -36.0, 36.0)):
        v = allf[on, F[name]]
        assert v.min() >= lo - 1e-5 and v.max() <= hi + 1e-5, name
        assert abs(v.mean().item() - (lo + hi) / 2) < 0.05 * (hi - lo), name
    off = allf[~on]
    assert (
        (off[:, F["brightness"]] == 1).all()
        and (off[:, F["contrast"]] == 1).all()
        and (off[:, F["hue_deg"]] == 0).all()
    )
    # saturation = jitter factor x (0 if grayscale)
    gray = allf[:, F["grayscale"]] == 1
    assert (allf[gray, F["saturation"]] == 0).all()
    sat = allf[on & ~gray, F["saturation"]]
    assert sat.min() >= 0.8 - 1e-5 and sat.max() <= 1.2 + 1e-5


def test_zero_jitter_amplitudes_keep_identity(tiny_shardset):
    """saturation = hue = 0 (grayscale data, e.g. the MNIST preset) builds and keeps those factors at identity
    (DALI's random.uniform refuses the empty range [0, 0); this used to fail the pipeline build)."""
    cfg = DataConfig(global_size=32, local_size=16, n_local=2, batch_size=16, saturation=0.0, hue=0.0,
                     grayscale_p=0.0, jitter_p=1.0)
    batch = next(iter(ViewLoader(tiny_shardset, cfg, debug=True, seed=3)))
    f = torch.cat(batch.flags).double()
    assert (f[:, F["jittered"]] == 1).all()
    assert (f[:, F["saturation"]] == 1).all() and (f[:, F["hue_deg"]] == 0).all()
    assert f[:, F["brightness"]].std() > 0.05 and f[:, F["contrast"]].std() > 0.05


def _torchvision_areas(shardset, scale, n: int = 6000) -> torch.Tensor:
    """Relative crop areas drawn by torchvision's RandomResizedCrop.get_params on the set's image sizes."""
    import io

    from PIL import Image
    from test_data_loader import shard_contents
    from torchvision.transforms import RandomResizedCrop

    sizes = [Image.open(io.BytesIO(jpg)).size for jpg, _ in shard_contents(shardset)]
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(0)
        out = []
        for k in range(n):
            w, h = sizes[k % len(sizes)]
            _, _, ch, cw = RandomResizedCrop.get_params(torch.empty(1, h, w), list(scale), [3 / 4, 4 / 3])
            out.append(ch * cw / (h * w))
    return torch.tensor(out, dtype=torch.float64)


def test_crop_area_distribution_matches_torchvision(flag_stats, tiny_shardset):
    glob = torch.cat([flag_stats[i][:, F["area"]] for i in range(2)])
    loc = torch.cat([flag_stats[i][:, F["area"]] for i in range(2, 8)])
    # whole-pixel windows on ~120x100 images: allow a little rounding slack at the range ends
    assert glob.min() >= 0.38 and glob.max() <= 1.0
    assert loc.min() >= 0.045 and loc.max() <= 0.42
    for ours, scale in ((glob, (0.4, 1.0)), (loc, (0.05, 0.4))):
        ref = _torchvision_areas(tiny_shardset, scale)
        # same algorithm (uniform area, log-uniform ratio, 10 tries): large areas are rejected more
        # often when the window would not fit, so neither mean is the naive (lo + hi) / 2
        se = math.sqrt(ours.var().item() / len(ours) + ref.var().item() / len(ref))
        assert abs(ours.mean().item() - ref.mean().item()) < 4.5 * se + 0.005, (scale, ours.mean(), ref.mean())
        q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
        width = scale[1] - scale[0]
        assert (torch.quantile(ours, q) - torch.quantile(ref, q)).abs().max() < 0.06 * width, scale
    # views of one image get independent crops
    assert not torch.equal(flag_stats[2][:, F["area"]], flag_stats[3][:, F["area"]])


# ---------------------------------------------------------------------------------------------
# pixel checks: the view is what its flags say
# ---------------------------------------------------------------------------------------------


def _u8(view: torch.Tensor, cfg: DataConfig) -> np.ndarray:
    """Normalized [B, 3, H, W] back to rounded 0..255 values [B, H, W, 3] (float64)."""
    mean = torch.tensor(cfg.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float64).view(1, 3, 1, 1)
    x = (view.double() * std + mean) * 255
    return x.round().permute(0, 2, 3, 1).numpy()


def _pair(shardset, base: dict, changed: dict, n_batches: int = 2, n_local: int = 2):
    cfgs = [DataConfig(global_size=40, local_size=24, n_local=n_local, batch_size=16, **{**OFF, **base, **c})
            for c in ({}, changed)]
    out = []
    for cfg in cfgs:
        it = iter(ViewLoader(shardset, cfg, debug=True, seed=21))
        out.append([next(it) for _ in range(n_batches)])
    for a, b in zip(*out):
        assert torch.equal(a.indices, b.indices)
    return cfgs, out


def _changed_images(plain, augmented, cfg, flag: str):
    """Yield ``(x, y, flags)`` (0..255 HWC before/after, the image's debug flags) for every image whose
    ``flag`` is set; an image without it must come out unchanged."""
    for a, b in zip(plain, augmented):
        for v in range(len(a.views)):
            fl = b.flags[v]
            for k in range(len(fl)):
                x, y = _u8(a.views[v][k : k + 1], cfg)[0], _u8(b.views[v][k : k + 1], cfg)[0]
                if fl[k, F[flag]] == 0:
                    assert np.array_equal(x, y)
                    continue
                yield x, y, fl[k]


def test_flip_is_the_mirror_image(tiny_shardset):
    (cfg, _), (plain, flipped) = _pair(tiny_shardset, {}, {"flip_p": 0.5})
    n_flipped = 0
    for a, b in zip(plain, flipped):
        for v in range(len(a.views)):
            f = b.flags[v][:, F["flipped"]] == 1
            n_flipped += int(f.sum())
            assert torch.equal(b.views[v][f], torch.flip(a.views[v][f], dims=[-1]))
            assert torch.equal(b.views[v][~f], a.views[v][~f])
    assert n_flipped > 20


def test_solarized_view_is_inverted_above_128(tiny_shardset):
    (cfg, _), (plain, sol) = _pair(tiny_shardset, {}, {"solarize_p_global": (0.0, 0.5)})
    n = 0
    for a, b in zip(plain, sol):
        f = b.flags[1][:, F["solarized"]] == 1
        n += int(f.sum())
        x, y = _u8(a.views[1][f], cfg), _u8(b.views[1][f], cfg)
        assert np.array_equal(y, np.where(x >= 128, 255 - x, x))
        assert torch.equal(b.views[1][~f], a.views[1][~f])
        assert torch.equal(b.views[0], a.views[0])
    assert n > 5


def test_grayscale_view_has_equal_channels_equal_to_luma(tiny_shardset):
    (cfg, _), (plain, gray) = _pair(tiny_shardset, {}, {"grayscale_p": 0.5})
    n = 0
    for a, b in zip(plain, gray):
        for v in range(len(a.views)):
            f = b.flags[v][:, F["grayscale"]] == 1
            n += int(f.sum())
            y = _u8(b.views[v][f], cfg)
            assert np.abs(y - y[..., :1]).max() <= 1.0, "channels equal (to float rounding)"
            x = _u8(a.views[v][f], cfg)
            luma = x @ np.array([0.299, 0.587, 0.114])
            assert np.abs(y[..., 0] - luma).max() <= 1.5
            assert torch.equal(b.views[v][~f], a.views[v][~f])
    assert n > 10


def _jitter(x: np.ndarray, b: float, c: float, s: float, hue_deg: float, centre_mode: str = "mean") -> np.ndarray:
    """The DALI jitter on 0..255 RGB. ``"mean"``: saturation + YIQ hue rotation ``y = M(h, s) x``,
    then ``B * (m + C * (y - m))`` about the input's mean luma ``m``, rounded and clipped once. ``"128"``: DALI's
    single color_twist ``B * (128 + C * (M(h, s) x - 128))``, clipped once."""
    rgb2yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
    yiq2rgb = np.array([[1, 0.956, 0.621], [1, -0.272, -0.647], [1, -1.107, 1.705]])
    h = math.radians(hue_deg)
    rot = np.array([[1, 0, 0], [0, math.cos(h), math.sin(h)], [0, -math.sin(h), math.cos(h)]])
    m = yiq2rgb @ rot @ np.diag([1, s, s]) @ rgb2yiq
    if centre_mode == "128":
        return np.clip(np.round(b * (128 + c * (x @ m.T - 128))), 0, 255)
    y = x @ m.T
    centre = (x @ np.array([0.299, 0.587, 0.114])).mean()
    return np.clip(np.round(b * (centre + c * (y - centre))), 0, 255)


@pytest.mark.parametrize("centre_mode", ["mean", "128"])
def test_jitter_matches_the_formula(tiny_shardset, centre_mode):
    (cfg, _), (plain, jit) = _pair(tiny_shardset, {"contrast_center": centre_mode}, {"jitter_p": 0.8})
    n = 0
    for x, y, fl in _changed_images(plain, jit, cfg, "jittered"):
        n += 1
        ref = _jitter(x, *(fl[F[name]].item() for name in ("brightness", "contrast", "saturation", "hue_deg")),
                      centre_mode=centre_mode)
        assert np.abs(ref - y).mean() < 0.6 and np.abs(ref - y).max() <= 3, np.abs(ref - y).mean()
    assert n > 40


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian, radius ceil(3 sigma), reflect-101 borders, on HWC float."""
    r = math.ceil(3 * sigma)
    t = np.arange(-r, r + 1)
    w = np.exp(-(t**2) / (2 * sigma**2))
    w /= w.sum()
    pad = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(w[i] * pad[i : i + x.shape[0], :, :] for i in range(2 * r + 1))
    return sum(w[i] * rows[:, i : i + x.shape[1], :] for i in range(2 * r + 1))


def test_blur_matches_the_gaussian_formula(tiny_shardset):
    (cfg, _), (plain, blur) = _pair(tiny_shardset, {}, {"blur_p_global": (1.0, 0.1), "blur_p_local": 0.5})
    n = 0
    for x, y, fl in _changed_images(plain, blur, cfg, "blurred"):
        n += 1
        ref = _gaussian_blur(x, fl[F["sigma"]].item())
        assert np.abs(ref - y).mean() < 0.75 and np.abs(ref - y).max() <= 3, fl[F["sigma"]].item()
    assert n > 30


def test_resize_filter_option_changes_only_the_resampling(tiny_shardset):
    """data.interp reaches the graph: same windows and draws, different filter -> close but not equal views."""
    (cfg, _), (cubic, gauss) = _pair(tiny_shardset, {"interp": "cubic"}, {"interp": "gaussian"})
    diffs = []
    for a, b in zip(cubic, gauss):
        for v in range(len(a.views)):
            assert torch.equal(a.flags[v], b.flags[v])
            diffs.append(np.abs(_u8(a.views[v], cfg) - _u8(b.views[v], cfg)).mean())
    assert 0.0 < float(np.mean(diffs)) < 2.0, diffs
