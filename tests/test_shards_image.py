"""Validating / normalizing one image: kept bytes, conversions, skips, and the claims behind them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import photo_crops
from PIL import Image

from dino_pipe.shards.image import UnreadableImage, prepare_image
from dino_pipe.shards.jpeg import JpegAnomaly, JpegTruncated, exif_orientation, inspect_jpeg


def jpeg_bytes(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=kw.pop("quality", 90), **kw)
    return buf.getvalue()


def png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG" and im.mode == "RGB"
    return np.asarray(im)


def dali_decode_each(blobs: list[bytes], tmp_path) -> list[str | None]:
    """DALI's CPU decoder on each blob alone (in child processes: DALI's error path can crash):
    None when it decodes, else the error text."""
    from dino_pipe.shards.dali_decode import run_decode_tasks

    path = tmp_path / "blobs.bin"
    path.write_bytes(b"".join(blobs))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    tasks = [{"kind": "image", "path": str(path), "offset": int(o), "size": len(b)} for o, b in zip(offsets, blobs)]
    return run_decode_tasks(tasks, "cpu", 1)


@pytest.fixture(scope="module")
def crop(photos) -> np.ndarray:
    return photo_crops(photos, 1, seed=5, size=(160, 120))[0]


def test_valid_rgb_jpegs_are_kept_byte_for_byte(crop):
    for kw in ({}, {"progressive": True}, {"subsampling": 0}, {"restart_marker_blocks": 3}):
        data = jpeg_bytes(crop, **kw)
        for check in ("structure", "decode"):
            out = prepare_image(data, check=check)
            assert out.data == data and not out.converted


def test_truncation_is_caught_by_the_structure_check_and_by_the_draft_decode(crop):
    """The claim in the task: a 1/8-scale draft decode still raises on truncated data."""
    data = jpeg_bytes(crop)
    for cut in (len(data) // 3, len(data) - 200, len(data) - 2):
        short = data[:cut]
        with pytest.raises(JpegTruncated):
            inspect_jpeg(short)
        im = Image.open(io.BytesIO(short))
        im.draft("RGB", (im.width // 8, im.height // 8))
        assert im.size[0] <= crop.shape[1] // 8 + 1  # really decoding at 1/8 scale
        with pytest.raises(OSError, match="truncated"):
            im.load()
        with pytest.raises(UnreadableImage, match="truncated"):
            prepare_image(short)


def test_dali_dies_on_truncation_but_not_on_damaged_entropy_data(crop, tmp_path):
    """Why a structural check suffices: DALI's CPU decoder fails on a cut-off JPEG and on garbage,
    and only warns on bit flips inside the entropy-coded data (the check keeps those)."""
    data = jpeg_bytes(crop)
    sos = data.find(b"\xff\xda")
    flipped = bytearray(data)
    for i in range(sos + 300, sos + 340):
        flipped[i] ^= 0x5A
    flipped = bytes(flipped)
    assert prepare_image(flipped).data == flipped
    ok, cut, garbage = dali_decode_each([flipped, data[: len(data) - 2], b"\x00garbage" * 50], tmp_path)
    assert ok is None and cut is not None and garbage is not None


@pytest.mark.parametrize("seed", [0, 1])
def test_structure_check_never_keeps_a_jpeg_a_decoder_rejects(crop, seed, tmp_path):
    """Fuzz: mutate/insert/delete header bytes or truncate; whatever is kept as original bytes
    must decode with PIL and with DALI; whatever PIL cannot decode must not be stored."""
    rng = np.random.default_rng(seed)
    bases = [jpeg_bytes(crop), jpeg_bytes(crop, progressive=True), jpeg_bytes(crop[:64, :80], subsampling=0)]
    kept, outcomes = [], {"kept": 0, "converted": 0, "skipped": 0}
    for _ in range(300):
        d = bytearray(bases[rng.integers(len(bases))])
        head = d.find(b"\xff\xda") + 20
        kind = rng.integers(4)
        if kind == 0:
            for _ in range(rng.integers(1, 4)):
                d[rng.integers(2, head)] = rng.integers(256)
        elif kind == 1:
            p = rng.integers(2, head)
            d[p:p] = bytes([rng.integers(256)])
        elif kind == 2:
            del d[rng.integers(2, head)]
        else:
            d = d[: rng.integers(2, len(d))]
        d = bytes(d)
        try:
            out = prepare_image(d)
        except UnreadableImage:
            outcomes["skipped"] += 1
            continue
        outcomes["converted" if out.converted else "kept"] += 1
        decode(out.data)  # stored bytes always decode
        if not out.converted:
            Image.open(io.BytesIO(d)).load()
            kept.append(d)
    assert min(outcomes.values()) > 10, outcomes  # the fuzz exercised every path
    assert dali_decode_each(kept, tmp_path) == [None] * len(kept)


def test_conversions(crop):
    h, w = 40, 60
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (200, 30, 30)
    a[:, w // 2 :] = (30, 30, 200)

    def close(x: np.ndarray, y: np.ndarray) -> bool:  # away from the colour edge (JPEG rings there)
        return np.abs(x.astype(int) - y)[:, list(range(0, w // 2 - 6)) + list(range(w // 2 + 6, w))].max() < 16

    out = prepare_image(png_bytes(Image.fromarray(a)))
    assert out.conversion == "PNG RGB" and close(decode(out.data), a)

    cmyk = io.BytesIO()
    Image.fromarray(a).convert("CMYK").save(cmyk, "JPEG", quality=95)
    out = prepare_image(cmyk.getvalue())
    assert out.conversion == "CMYK JPEG" and close(decode(out.data), a)

    gray = jpeg_bytes(crop[..., 0])
    out = prepare_image(gray)
    g = decode(out.data)
    assert out.conversion == "grayscale JPEG" and np.abs(g[..., 0].astype(int) - g[..., 2]).max() <= 2

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display = rotate 90 degrees clockwise
    out = prepare_image(jpeg_bytes(a, quality=95, exif=exif.tobytes()))
    up = decode(out.data)
    assert out.conversion == "EXIF-rotated" and up.shape == (w, h, 3)
    assert np.abs(up[5, h // 2].astype(int) - (200, 30, 30)).max() < 16  # left half became the top
    assert np.abs(up[-5, h // 2].astype(int) - (30, 30, 200)).max() < 16
    assert b"Exif" not in out.data[:200]

    pal = Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    transparent_index = pal.getpixel((0, 0))
    out = prepare_image(png_bytes(pal, transparency=transparent_index))
    rgb = decode(out.data)
    assert (
        out.conversion == "PNG P" and (rgb[h // 2, 5] > 240).all() and rgb[h // 2, -5, 2] > 150
    )  # transparent -> white

    ramp = (np.arange(64 * 32, dtype=np.uint32).reshape(32, 64) * 32).astype(np.uint16)  # 0..65504
    out = prepare_image(png_bytes(Image.fromarray(ramp)))
    g16 = decode(out.data)[..., 1].astype(int)
    assert out.conversion.startswith("PNG I") and np.abs(g16 - ramp / 257).max() <= 3 and g16.max() > 240

    big = np.asarray(Image.fromarray(crop).resize((1200, 900)))
    out = prepare_image(jpeg_bytes(big), max_side=300)
    assert out.conversion == "downscaled" and decode(out.data).shape == (225, 300, 3)
    assert prepare_image(jpeg_bytes(big), max_side=1200).converted is False


def test_unreadable_files_have_reasons():
    for data, reason in [
        (b"", "empty"),
        (b"hello, not an image\n" * 20, "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image|cannot decode"),
    ]:
        with pytest.raises(UnreadableImage, match=reason):
            prepare_image(data)


def test_exif_orientation_parser_matches_pil(crop):
    for orientation in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = jpeg_bytes(crop, exif=exif.tobytes())
        assert inspect_jpeg(data).orientation == orientation == Image.open(io.BytesIO(data)).getexif()[0x0112]
    assert exif_orientation(b"Exif\0\0II*\0\xff\xff\xff\x7f") == 1  # broken offsets: upright, no crash
    with pytest.raises(JpegAnomaly):
        inspect_jpeg(b"\xff\xd8\xff\xd9")
