"""Validate and normalize one image file: what goes into a shard is a JPEG that DALI decodes.

``prepare_image(data)`` returns a :class:`PreparedImage` or raises :class:`UnreadableImage`.

1. **Kept as original bytes**: a baseline/extended/progressive 8-bit 3-component JPEG, not
   multi-picture, without EXIF rotation, within ``max_side``, that passes the structural check of
   :mod:`dino_pipe.shards.jpeg` (every marker segment, table and scan header, and an end-of-image
   marker after the last scan -- the truncation check). With ``check="decode"`` it is also
   decoded at 1/8 scale (``Image.draft("YCbCr", (w // 8, h // 8))`` + ``load()``): no full inverse
   DCT or colour conversion, but every coefficient is still Huffman-decoded; and
   :func:`scan_cut_short` catches a file cut inside its last scan with an end-of-image marker
   appended, which the structure cannot show and libjpeg only warns about (it fills the rest with
   gray). Both also run for JPEGs about to be converted. Cost on a 110 KB photo: ~0.05 ms for the
   structural check, ~1 ms for the decode check (``tools/bench_shard.py``), so ``structure`` is
   the default and ``dino-pipe verify`` always runs the cut-scan check.
2. **Converted** to an RGB JPEG at ``quality``: anything else PIL fully decodes -- CMYK/YCCK or
   grayscale JPEG, other JPEG processes, a JPEG whose structure the strict check did not accept,
   PNG (also one named ``.JPEG``), GIF/BMP/TIFF/WebP, palette, alpha, 16-bit, EXIF-rotated (the
   rotation is baked into the pixels and no EXIF is written), or larger than ``max_side``
   (downscaled with Lanczos). Alpha is composited over white; 16-bit values are scaled by 1/257.
3. **Unreadable** (skipped, with a one-line reason): zero bytes, truncated, garbage, decompression
   bombs, anything PIL cannot fully decode.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from dino_pipe.shards.jpeg import HUFFMAN_SOF, JpegAnomaly, JpegInfo, JpegTruncated, inspect_jpeg

ImageFile.LOAD_TRUNCATED_IMAGES = False

CHECKS = ("structure", "decode")
_ORIENTATION_TAG = 0x0112


class UnreadableImage(Exception):
    """The file cannot become a sample; ``str(exc)`` is the one-line reason for the manifest."""


@dataclass(frozen=True)
class PreparedImage:
    """What goes into the shard: JPEG bytes, and why they were re-encoded (``None`` = original)."""

    data: bytes
    conversion: str | None = None

    @property
    def converted(self) -> bool:
        return self.conversion is not None


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _conversion_reasons(info: JpegInfo, too_big: bool) -> list[str]:
    """Why a structurally sound JPEG cannot be stored as is (empty list: keep it)."""
    reasons = []
    if info.components == 1:
        reasons.append("grayscale JPEG")
    elif info.components == 4:
        reasons.append("CMYK JPEG")
    elif info.components != 3:
        reasons.append(f"{info.components}-component JPEG")
    if info.sof not in HUFFMAN_SOF or info.precision != 8:
        reasons.append(f"JPEG process SOF{info.sof - 0xC0} {info.precision}-bit")
    if info.multi_picture:
        reasons.append("multi-picture JPEG (MPO)")
    if info.orientation != 1:
        reasons.append("EXIF-rotated")
    if too_big:
        reasons.append("downscaled")
    return reasons


CUT_SHORT = "JPEG data cut short (its last scan stops before the image is complete; end-of-image marker appended)"
# Bytes put before the end-of-image marker by the cut-scan probe; no 0xFF, so never a marker.
_PROBE = bytes((i * 73 + 41) % 255 for i in range(256))


def _decode(data: bytes, mode: str | None, size: tuple[int, int]) -> Image.Image:
    """Decode with PIL (libjpeg), DCT-scaled towards ``size``; ``mode`` "L"/"YCbCr" skips colour conversion."""
    im = Image.open(io.BytesIO(data), formats=["JPEG"])
    im.draft(mode, size)
    im.load()
    return im


def _probe_mode(info: JpegInfo) -> str | None:
    """YCbCr output (no colour conversion) for a YCbCr JPEG; others decode to their own mode."""
    return "YCbCr" if info.components == 3 and info.adobe_transform != 0 else None


def _probe_scale(info: JpegInfo) -> tuple[int, int]:
    """Full size for progressive JPEGs (a cut AC scan only shows at full scale), else 1/8."""
    if info.sof in (0xC2, 0xC6, 0xCA, 0xCE):
        return info.width, info.height
    return max(1, info.width // 8), max(1, info.height // 8)


def _may_be_cut(im: Image.Image, info: JpegInfo) -> bool:
    """Could this decode of a single-scan sequential JPEG hide a cut? A cut makes libjpeg leave every
    later MCU zero, so the last block is exactly mid-gray (Y = 128); anything else proves the scan ran
    to the end. Other JPEGs (several scans, restart markers) always need the probe."""
    if info.scans != 1 or info.restart_interval or info.sof in (0xC2, 0xC6, 0xCA, 0xCE):
        return True
    if im.mode not in ("L", "YCbCr"):  # converted output (CMYK, RGB): a zero block is not exactly 128
        return True
    last = im.getpixel((im.width - 1, im.height - 1))
    return (last[0] if isinstance(last, tuple) else last) == 128


def scan_cut_short(data: bytes, info: JpegInfo, first: Image.Image | None = None, force: bool = False) -> bool:
    """True when the last scan of a structurally sound JPEG is cut short (an end-of-image marker
    appended to a truncated file): libjpeg then only warns and fills the rest with gray.

    The probe: put 256 non-marker bytes before the end-of-image marker and decode again. After a
    complete scan libjpeg skips them as extraneous bytes (same pixels); in a cut scan it decodes
    them as image data (different pixels). ``first``: a decode of ``data`` at :func:`_probe_scale`
    in :func:`_probe_mode`, when the caller has one; ``force``: always run the probe (benchmarks).
    Decoder errors propagate.
    """
    size = _probe_scale(info)
    first = first if first is not None else _decode(data, _probe_mode(info), size)
    if not force and not _may_be_cut(first, info):
        return False
    cut = info.eoi
    while cut > 0 and data[cut - 1] == 0xFF:  # keep fill bytes next to their marker
        cut -= 1
    probed = _decode(data[:cut] + _PROBE + data[cut:], _probe_mode(info), size)
    return probed.tobytes() != first.tobytes()


def _draft_decode(data: bytes, info: JpegInfo) -> None:
    """Decode at 1/8 scale (plus the cut-scan probe); raises UnreadableImage when libjpeg (via PIL)
    fails or the last scan is cut short."""
    try:
        im = _decode(data, _probe_mode(info), (max(1, info.width // 8), max(1, info.height // 8)))
        cut = scan_cut_short(data, info, first=im if _probe_scale(info)[0] < info.width else None)
    except Exception as e:
        raise UnreadableImage(f"cannot decode JPEG ({type(e).__name__}: {_short(e)})") from None
    if cut:
        raise UnreadableImage(CUT_SHORT)


def jpeg_problem(data: bytes) -> str | None:
    """Why a stored JPEG must not be trusted (truncated, or its last scan cut short), else None.

    Only definitive findings: a file the structural check is unsure about, or that PIL cannot
    decode, is left to DALI (``dino-pipe verify`` decodes every image with it anyway).
    """
    if not is_jpeg(data):
        return None
    try:
        info = inspect_jpeg(data)
    except JpegTruncated as e:
        return str(e)
    except Exception:
        return None
    try:
        return CUT_SHORT if scan_cut_short(data, info) else None
    except Exception:
        return None


def prepare_image(
    data: bytes, quality: int = 95, max_side: int | None = None, check: str = "structure"
) -> PreparedImage:
    """Validate ``data`` (a whole image file) and return the JPEG bytes to store.

    ``check``: ``"structure"`` (default; structural JPEG check) or ``"decode"`` (also decode kept
    JPEGs at 1/8 scale). Raises :class:`UnreadableImage` with the reason when the file cannot be
    decoded.
    """
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    reasons: list[str] = []
    if is_jpeg(data):
        try:
            info = inspect_jpeg(data)
        except JpegTruncated as e:
            raise UnreadableImage(str(e)) from None
        except JpegAnomaly as e:
            reasons.append(f"irregular JPEG ({re.sub(r' at byte [0-9]+', '', str(e))})")
        except Exception as e:  # the check is unsure: let the full decoder decide
            reasons.append(f"irregular JPEG ({type(e).__name__})")
        else:
            too_big = max_side is not None and max(info.width, info.height) > max_side
            reasons = _conversion_reasons(info, too_big)
            if check == "decode":  # also before a conversion: a cut scan would be re-encoded, gray and all
                _draft_decode(data, info)
            if not reasons:
                return PreparedImage(data)
    return _convert(data, quality, max_side, reasons)


def _convert(data: bytes, quality: int, max_side: int | None, reasons: list[str]) -> PreparedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise UnreadableImage(f"too large to decode safely ({_short(e)})") from None
        except UnidentifiedImageError:
            raise UnreadableImage("not an image PIL can read (unknown format)") from None
        except Exception as e:
            raise UnreadableImage(f"not an image PIL can read ({type(e).__name__}: {_short(e)})") from None
        try:
            return _convert_opened(im, quality, max_side, reasons)
        except UnreadableImage:
            raise
        except Exception as e:  # truncated data, broken tables, bad PNG CRCs, bombs on load, ...
            raise UnreadableImage(f"cannot decode {im.format or 'image'} ({type(e).__name__}: {_short(e)})") from None


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:  # unreadable EXIF is not a reason to drop the image
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is composited over white; 16-bit is scaled to 8-bit."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = a * 255.0 if np.nanmax(a) <= 1.0 else a
            a = np.nan_to_num(a)
        elif mode.startswith("I;16") or a.max() > 255:
            a = a.astype(np.float64) / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    if mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX") or (mode == "P" and not has_alpha):
        return im.convert("RGB")
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _encode_jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _convert_opened(im: Image.Image, quality: int, max_side: int | None, reasons: list[str]) -> PreparedImage:
    """Fully decode an opened image, rotate it upright, make it 8-bit RGB within ``max_side``, encode."""
    w, h = im.size
    if w < 1 or h < 1:
        raise UnreadableImage(f"image has no pixels ({w}x{h})")
    too_big = max_side is not None and max(w, h) > max_side
    orientation = _orientation(im)
    if not reasons:  # not a JPEG: say what it was
        reasons.append(f"{im.format or 'unknown format'} {im.mode}")
        if orientation != 1:
            reasons.append("EXIF-rotated")
        if too_big:
            reasons.append("downscaled")
    if too_big and im.format == "JPEG":
        im.draft(im.mode, _fit((w, h), max_side))  # DCT-domain reduction, stays >= the target
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # first frame of animations / multi-page files
    im.load()
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    im = _to_rgb(im)
    if too_big:
        im = im.resize(_fit(im.size, max_side), Image.Resampling.LANCZOS)
    return PreparedImage(_encode_jpeg(im, quality), ", ".join(reasons))


def _short(e: Exception) -> str:
    """First line of an exception message, without object addresses (manifests stay deterministic)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<...>", text)[:160]
