"""The DALI graphs: the multi-crop training pipeline and the evaluation pipeline.

One definition, two devices (:data:`dino_pipe.device.Device`). ``device="cuda"`` decodes with nvJPEG
(``fn.decoders.image`` on the ``"mixed"`` backend: hardware JPEG decoder share ``hw_decoder_load``) and
runs every augmentation op on the GPU; ``device="cpu"`` builds the same graph from CPU operators
(the pipeline gets ``device_id=None``). Only the decoder differs: :func:`view_ops` turns one
:class:`~dino_pipe.data.recipe.ViewSpec` into DALI ops and is used for every view on both devices.

Training graph, per sample::

    webdataset reader (shuffled buffer, sharded by rank) -> jpeg bytes (+ .cls bytes)
    peek_image_shape(jpeg) -> [H, W, 3]           (from the header; no decode)
    decode ONCE -> image uint8 HWC
    for each view spec:                            (cut from that one decoded image)
        random_crop_generator(shape)               crop window: area U(scale), ratio log-U(aspect_ratio)
        resize(ROI = window, size, antialias,      data.interp: Gaussian shrink / cubic enlarge
               min_filter, mag_filter)             (default), cubic (PIL bicubic) or linear
        color_twist(s, h) + brightness_contrast(b, c, centre = mean grey)
                                                   jitter (p) and grayscale (p, as saturation 0)
        if blur:     gaussian_blur(sigma)          conditional: DALI refuses sigma 0
        if solarize: lookup_table(x>=128 -> 255-x) conditional
        crop_mirror_normalize(mirror=flip)         flip + (x/255-mean)/std + HWC->CHW + dtype

Deliberate deviations from torchvision/PIL semantics (measured effects: the README's table and
:mod:`dino_pipe.data.fidelity`):

* **Jitter order is fixed.** torchvision's ``ColorJitter`` applies brightness, contrast, saturation
  and hue in a random order, clipping to [0, 255] after each. Here the order is always
  saturation -> hue (one ``color_twist`` pass to float) -> contrast -> brightness (one
  ``brightness_contrast`` pass: ``out = B * (m + C * (y - m))``), rounded and clipped once at the end.
* **Contrast centre** (``data.contrast_center``): ``"mean"`` (default) uses the view's mean grey
  ``m`` as torchvision does (computed before the twist: saturation and the YIQ hue rotation keep
  the luma; on the GPU the 3-value mean travels to the CPU as the op's argument). ``"128"`` runs
  DALI's single ``color_twist`` with contrast around 128 (no reduction, one pass): the per-view
  mean then moves by ``(1 - c)(128 - m)``.
* **Hue rotates in YIQ** (an angle ``360 * h`` degrees about the luma axis), not in HSV.
  Saturation scales the YIQ chroma, which is exactly torchvision's blend with the ITU-R 601 grey.
* **Grayscale is folded into the jitter**: saturation 0 in the same ``color_twist`` (luma
  0.299 R + 0.587 G + 0.114 B, as PIL's ``convert("L")``); channels agree to +-1 grey level
  (float rounding per channel) instead of exactly.
* **Blur is a true Gaussian** with window ``2 * ceil(3 sigma) + 1`` (DALI's default); PIL's
  ``GaussianBlur(radius=sigma)`` is a three-pass extended box blur approximating the same sigma.
* **Resize filter** (``data.interp``, default ``gaussian``): Gaussian shrink / cubic enlarge instead
  of PIL bicubic both ways; ``cubic`` reproduces PIL bicubic, ``linear`` is a triangle filter.
  Measured effect and cost: README, "Deliberate deviations from the torchvision/PIL recipe";
  :func:`dino_pipe.data.fidelity.resize_filter_effects` and ``tools/bench_loader.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator, NamedTuple, Sequence

from nvidia.dali import fn, pipeline_def, types

from dino_pipe.config import Interp, check_choice
from dino_pipe.data.recipe import ViewSpec
from dino_pipe.data.shardset import ShardSet
from dino_pipe.device import Device, dali_decoder
from dino_pipe.errors import UserError

#: per-view debug flags, in the order of the ``flags`` output rows
FLAG_NAMES = ("flipped", "jittered", "grayscale", "blurred", "sigma", "solarized", "area",
              "brightness", "contrast", "saturation", "hue_deg")

_SOLARIZE_LUT = [k if k < 128 else 255 - k for k in range(256)]


def op_seed(seed: int, *names: object) -> int:
    """A deterministic 31-bit seed for one random op, from the run seed and the op's place in the graph."""
    text = ":".join(str(x) for x in (seed, *names))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


@contextlib.contextmanager
def dali_errors(shardset: ShardSet) -> Iterator[None]:
    """Translate DALI's RuntimeError (build or run) into one :class:`UserError` line naming the set."""
    try:
        yield
    except RuntimeError as e:
        raise UserError(f"shard set {shardset.root}: DALI could not read it ({_short_reason(e)}); "
                        f"check it with `dino-pipe verify {shardset.root}`") from None


def _short_reason(e: BaseException) -> str:
    """One line from DALI's multi-line error: the failing operator and what it reported."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    op = ""
    for ln in lines:
        if ln.startswith("Error in") and "`" in ln:
            op = ln.split("`")[1].replace("nvidia.dali.", "")
            break
    after = text.split("encountered:", 1)[1] if "encountered:" in text else text
    body = [ln.strip() for ln in after.splitlines()
            if ln.strip() and not ln.strip().startswith(("Current pipeline", "Critical error", "C++ context"))]
    reason = body[0] if body else type(e).__name__
    if "decoders" in op:
        reason = f"a sample's .jpg is not a decodable image: {reason}"
    elif "readers" in op:
        reason = f"reading the tar/index failed: {reason}"
    return (f"{op}: {reason}" if op else reason)[:240]


def read_shards(shardset: ShardSet, *, shard_id: int, num_shards: int, shuffle: bool, seed: int,
                shuffle_buffer: int, stick_to_shard: bool):
    """``fn.readers.webdataset`` over the set: ``(jpegs, labels-or-None)``.

    ``pad_last_batch=True`` pads every rank's shard to the same whole number of batches by
    repeating its last sample *at the end of the epoch* (the loaders drop those positions), so
    epoch boundaries stay aligned with batches and every rank runs the same number of iterations.
    Training rotates shards between ranks after each epoch (``stick_to_shard=False``: each rank
    sees the whole set over ``world_size`` epochs); evaluation sticks (rank ``r`` always reads
    samples ``[floor(N r / w), floor(N (r + 1) / w))``).
    """
    ext = ["jpg", "cls"] if shardset.labeled else ["jpg"]
    out = fn.readers.webdataset(
        paths=list(shardset.tars), index_paths=list(shardset.indexes), ext=ext,
        missing_component_behavior="error", random_shuffle=shuffle, initial_fill=shuffle_buffer,
        seed=seed, shard_id=shard_id, num_shards=num_shards, pad_last_batch=True,
        stick_to_shard=stick_to_shard, name="reader")
    if shardset.labeled:
        jpegs, labels = out
        return jpegs, labels
    return out, None


def decode(jpegs, device: Device, hw_decoder_load: float):
    """Decode to RGB uint8 HWC: nvJPEG on ``"cuda"`` (mixed backend), libjpeg-turbo on ``"cpu"``.

    The nvJPEG memory pools keep DALI's defaults (``device_memory_padding`` 16 MiB and
    ``host_memory_padding`` 8 MiB per thread, no preallocation hints) and grow when a larger image
    arrives: sizing them for ImageNet's largest JPEG cost ~3.4 GB of GPU and ~4.5 GB of pinned
    memory at 16 threads, paid at every pipeline build, for images most sets never hold.
    """
    decoder = dali_decoder(device)
    if decoder == "mixed":
        return fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, hw_decoder_load=hw_decoder_load)
    return fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)


def _coin(p: float, seed: int):
    return fn.random.coin_flip(probability=float(p), seed=seed)


def _as_bool(x):
    return fn.cast(x, dtype=types.BOOL)


def _as_float(x):
    return fn.cast(x, dtype=types.FLOAT)


def mean_luma(view, device: Device):
    """Per-sample mean grey level ``0.299 R + 0.587 G + 0.114 B`` of a uint8 HWC view, as a CPU scalar
    (on the GPU graph the 3-value channel mean is moved to the CPU to serve as an argument)."""
    m = fn.reductions.mean(view, axes=[0, 1])
    if device == "cuda":
        m = m.cpu()
    return m[0] * 0.299 + m[1] * 0.587 + m[2] * 0.114


#: ``data.interp`` -> (filter when shrinking, filter when enlarging); DALI widens the shrinking filter
#: by the scale factor (``antialias=True``), as PIL does for its bicubic/bilinear resize
RESIZE_FILTERS = {
    "cubic": (types.INTERP_CUBIC, types.INTERP_CUBIC),  # = PIL bicubic (the reference)
    "gaussian": (types.INTERP_GAUSSIAN, types.INTERP_CUBIC),  # ~1.5x cheaper shrink, ~PIL bicubic
    "linear": (types.INTERP_LINEAR, types.INTERP_LINEAR),  # = PIL bilinear
}


def resize_filters(interp: str) -> dict:
    """``fn.resize`` filter arguments for ``data.interp`` (``min_filter``: downscaling, ``mag_filter``: upscaling)."""
    check_choice(interp, Interp, "config key data.interp")
    shrink, enlarge = RESIZE_FILTERS[interp]
    return {"min_filter": shrink, "mag_filter": enlarge}


def view_ops(image, image_shape, spec: ViewSpec, *, index: int, seed: int, mean: Sequence[float],
             std: Sequence[float], dtype, device: str, contrast_center: str = "mean", debug: bool = False):
    """One view from the decoded ``image`` (uint8 HWC, CPU or GPU) -> ``(view CHW, flags or None)``.

    The random numbers (crop window, coins, factors) are drawn on the CPU as per-sample arguments;
    the pixel ops run on the device ``image`` lives on. ``flags`` (``debug=True``) is a float
    vector per sample, ordered as :data:`FLAG_NAMES`. Each augmentation is one function below, applied
    in the recipe's order; each random op's seed comes from the run seed, the view index and the op's name.
    """
    s = lambda what: op_seed(seed, index, what)  # noqa: E731
    view, window = _crop(image, image_shape, spec, s)
    one = _as_float(window[0]) * 0.0 + 1.0  # per-sample constant 1.0 (keeps flags ops free of RNG)
    colour = _colour_factors(spec, s, one)
    view = _colour(view, spec, colour, device, contrast_center)
    view, blurred, sigma = _blur(view, spec, s, one)
    view, solarized = _solarize(view, spec, s, one)
    view, flip = _flip_normalize(view, spec, s, mean, std, dtype)
    if not debug:
        return view, None
    flipped = _as_float(flip) if flip is not None else one * 0.0
    area = (_as_float(window[0]) * _as_float(window[1])) / (_as_float(image_shape[0]) * _as_float(image_shape[1]))
    flags = fn.stack(flipped, colour.jitter, colour.gray, blurred, sigma, solarized, area,
                     colour.brightness, colour.contrast, colour.saturation, colour.hue)
    return view, flags


def _crop(image, image_shape, spec: ViewSpec, s):
    """Random resized crop: a window of area ``U(spec.scale)`` and log-uniform aspect ratio, resized to
    ``spec.size`` with the ``spec.interp`` filters -> ``(view, window [h, w])``."""
    anchor, window = fn.random_crop_generator(image_shape, random_area=list(spec.scale),
                                              random_aspect_ratio=list(spec.aspect_ratio), seed=s("crop"))
    view = fn.resize(image, size=[spec.size, spec.size], roi_start=_as_float(anchor),
                     roi_end=_as_float(anchor + window), roi_relative=False, antialias=True,
                     **resize_filters(spec.interp))
    return view, window


class ColourFactors(NamedTuple):
    """Per-sample colour factors of one view (identity when a coin says "off"), and the two coins as 0/1."""

    brightness: object
    contrast: object
    saturation: object
    hue: object
    jitter: object
    gray: object


def _colour_factors(spec: ViewSpec, s, one) -> ColourFactors:
    """Colour jitter (p) and grayscale (p, as saturation 0) factors: identity parameters when a coin says "off"."""
    brightness = contrast = saturation = one
    hue = one * 0.0
    jitter = gray = one * 0.0
    if spec.jitter_p > 0:
        jitter = _as_float(_coin(spec.jitter_p, s("jitter")))
        b, c, sa, h = spec.brightness, spec.contrast, spec.saturation, spec.hue
        # a zero amplitude keeps the identity (fn.random.uniform refuses an empty range such as [0, 0))
        if b > 0:
            brightness = 1.0 + jitter * (fn.random.uniform(range=[1 - b, 1 + b], seed=s("b")) - 1.0)
        if c > 0:
            contrast = 1.0 + jitter * (fn.random.uniform(range=[1 - c, 1 + c], seed=s("c")) - 1.0)
        if sa > 0:
            saturation = 1.0 + jitter * (fn.random.uniform(range=[1 - sa, 1 + sa], seed=s("s")) - 1.0)
        if h > 0:
            hue = jitter * fn.random.uniform(range=[-360.0 * h, 360.0 * h], seed=s("h"))
    if spec.grayscale_p > 0:
        gray = _as_float(_coin(spec.grayscale_p, s("gray")))
        saturation = saturation * (1.0 - gray)
    return ColourFactors(brightness, contrast, saturation, hue, jitter, gray)


def _colour(view, spec: ViewSpec, f: ColourFactors, device: str, contrast_center: str):
    """Apply the colour factors: saturation + hue, then contrast about ``contrast_center`` and brightness."""
    if not (spec.jitter_p > 0 or spec.grayscale_p > 0):
        return view
    if contrast_center == "mean":
        # saturation and a YIQ hue rotation keep the luma, so the crop's mean luma now is the
        # view's mean grey when contrast is applied (torchvision's centre)
        # (float in between: DALI's uint8 rounding costs more than the twist itself on the CPU)
        center = mean_luma(view, device)
        view = fn.color_twist(view, saturation=f.saturation, hue=f.hue, dtype=types.FLOAT)
        return fn.brightness_contrast(view, brightness=f.brightness, contrast=f.contrast, contrast_center=center,
                                      dtype=types.UINT8)
    return fn.color_twist(view, brightness=f.brightness, contrast=f.contrast, saturation=f.saturation, hue=f.hue)


def _blur(view, spec: ViewSpec, s, one):
    """Gaussian blur, sigma ``U(spec.blur_sigma)``: p = 1 unconditional; 0 < p < 1 under a DALI conditional
    (sigma 0 is refused) -> ``(view, blurred 0/1, sigma or 0)``."""
    blurred = one * 0.0
    sigma = one * 0.0
    if spec.blur_p > 0:
        sigma = fn.random.uniform(range=list(spec.blur_sigma), seed=s("sigma"))
        if spec.blur_p >= 1.0:
            blurred = one
            view = fn.gaussian_blur(view, sigma=sigma)
        else:
            blurred = _as_float(_coin(spec.blur_p, s("blur")))
            if _as_bool(blurred):
                view = fn.gaussian_blur(view, sigma=sigma)
        sigma = sigma * blurred
    return view, blurred, sigma


def _solarize(view, spec: ViewSpec, s, one):
    """Solarization (``x >= 128 -> 255 - x``) with probability ``spec.solarize_p`` -> ``(view, solarized 0/1)``."""
    solarized = one * 0.0
    if spec.solarize_p > 0:
        solarized = _as_float(_coin(spec.solarize_p, s("solarize")))
        if _as_bool(solarized):
            view = fn.lookup_table(view, keys=list(range(256)), values=_SOLARIZE_LUT,
                                   dtype=types.UINT8, default_value=0)
    return view, solarized


def _flip_normalize(view, spec: ViewSpec, s, mean: Sequence[float], std: Sequence[float], dtype):
    """Horizontal flip (p), ``(x / 255 - mean) / std``, HWC -> CHW and the output dtype in one op
    -> ``(view, flip coin or None)``."""
    flip = _coin(spec.flip_p, s("flip")) if spec.flip_p > 0 else None
    cmn = dict(mean=[255.0 * m for m in mean], std=[255.0 * v for v in std], output_layout="CHW", dtype=dtype)
    view = (
        fn.crop_mirror_normalize(view, mirror=flip, **cmn)
        if flip is not None
        else fn.crop_mirror_normalize(view, **cmn)
    )
    return view, flip


@pipeline_def(enable_conditionals=True)
def train_graph(shardset: ShardSet, specs: Sequence[ViewSpec], *, device: Device, shard_id: int, num_shards: int,
                run_seed: int, shuffle_buffer: int, hw_decoder_load: float, mean, std, dtype,
                contrast_center: str = "mean", debug: bool = False, source=None):
    """Outputs: one view per spec (``[3, S, S]`` each), then the label bytes (if labelled), then
    (``debug``) the ``source_info`` string bytes and one flags vector per view.

    ``source``: a function returning ``(jpegs, labels-or-None)`` nodes that replaces the webdataset reader
    (streaming feeds the samples through ``fn.external_source``); the view ops stay the same."""
    if source is not None:
        jpegs, labels = source()
    else:
        jpegs, labels = read_shards(shardset, shard_id=shard_id, num_shards=num_shards, shuffle=True,
                                    seed=op_seed(run_seed, "reader", shard_id), shuffle_buffer=shuffle_buffer,
                                    stick_to_shard=False)
    shape = fn.peek_image_shape(jpegs)
    image = decode(jpegs, device, hw_decoder_load)
    views, flags = [], []
    for i, spec in enumerate(specs):
        v, f = view_ops(image, shape, spec, index=i, seed=op_seed(run_seed, "rank", shard_id), mean=mean, std=std,
                        dtype=dtype, device=device, contrast_center=contrast_center, debug=debug)
        views.append(v)
        flags.append(f)
    outputs = list(views)
    if labels is not None:
        outputs.append(labels)
    if debug:
        outputs.append(fn.get_property(jpegs, key="source_info"))
        outputs.extend(flags)
    return tuple(outputs)


@pipeline_def
def eval_graph(shardset: ShardSet, *, device: Device, shard_id: int, num_shards: int, resize: int, crop: int,
               hw_decoder_load: float, mean, std, dtype):
    """Outputs: image ``[3, crop, crop]`` (shorter side -> ``resize`` bicubic, centre crop,
    normalized), the ``source_info`` bytes, then the label bytes (if labelled). No shuffling."""
    jpegs, labels = read_shards(shardset, shard_id=shard_id, num_shards=num_shards, shuffle=False, seed=0,
                                shuffle_buffer=1, stick_to_shard=True)
    image = decode(jpegs, device, hw_decoder_load)
    image = fn.resize(image, resize_shorter=float(resize), interp_type=types.INTERP_CUBIC, antialias=True)
    image = fn.crop_mirror_normalize(image, crop=(crop, crop), crop_pos_x=0.5, crop_pos_y=0.5,
                                     mean=[255.0 * m for m in mean], std=[255.0 * v for v in std],
                                     output_layout="CHW", dtype=dtype)
    outputs = [image, fn.get_property(jpegs, key="source_info")]
    if labels is not None:
        outputs.append(labels)
    return tuple(outputs)


def dali_dtype(name: str, device: Device):
    """DALI output type for ``data.output_dtype``: half types on the GPU only; bf16 is cast by the loader."""
    if name == "float16":
        if device != "cuda":
            raise UserError("config key data.output_dtype: float16 output needs the GPU pipeline (use float32 on CPU)")
        return types.FLOAT16
    if name == "bfloat16" and device != "cuda":
        raise UserError("config key data.output_dtype: bfloat16 output needs the GPU pipeline (use float32 on CPU)")
    return types.FLOAT
