"""ImageNet in the forms users have it, as ``train`` and ``val`` splits with sorted-wnid labels.

* **Folders**: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG`` (torchvision's layout).
* **Flat val**: ``ROOT/val/ILSVRC2012_val_00000001.JPEG ...`` (the official archive extracted),
  labelled by the devkit or Kaggle's CSV (:mod:`dino_pipe.shards.imagenet_labels`).
* **Kaggle download**: ``SRC/ILSVRC/Data/CLS-LOC/{train,val,test}`` with ``LOC_val_solution.csv`` and
  ``LOC_synset_mapping.txt`` in ``SRC``.
* **Archives** (what ``torchvision.datasets.ImageNet`` expects): ``ILSVRC2012_img_train.tar``,
  ``ILSVRC2012_img_val.tar`` and ``ILSVRC2012_devkit_t12.tar.gz``, read in place
  (:mod:`dino_pipe.shards.archive`). Files, keys, order and labels equal those of the extracted tree,
  so the shards are byte-identical.

Labels are positions in the sorted wnid list (``n01440764`` -> 0), as torchvision's ``ImageFolder``.
``test`` (a folder or ``ILSVRC2012_img_test*.tar``) has no labels: it is skipped, and said so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dino_pipe.errors import UserError
from dino_pipe.shards.archive import TEST_TAR_GLOB, TRAIN_TAR, VAL_TAR, index_flat, index_nested
from dino_pipe.shards.imagenet_labels import LABEL_FILES, ImageNetLabels, file_stats, find_labels
from dino_pipe.shards.layout import SourceSplit, class_folders, digest, folder_split, is_image, make_split, walk

KAGGLE_PATHS = ("ILSVRC/Data/CLS-LOC", "Data/CLS-LOC", "CLS-LOC")
TEST_REASON = (
    "unlabelled test images (ImageNet publishes no labels for them; training and k-NN/linear eval do not use them)"
)


@dataclass
class ImageNetSource:
    """The splits found under an ImageNet root, what form they came in, and what was skipped."""

    splits: list[SourceSplit]
    form: str
    skipped_folders: list[dict]  # [{path, reason}], paths relative to SRC


def find_imagenet_root(d: Path) -> Path | None:
    """``d`` or the ``CLS-LOC`` folder of a Kaggle download below it, when it holds ImageNet's
    ``train/`` or ``val/`` (or ``d`` holds the train/val archives); None otherwise."""
    for rel in ("", *KAGGLE_PATHS):
        cand = d / rel if rel else d
        if (cand / "train").is_dir() or (cand / "val").is_dir():
            return cand
    if (d / TRAIN_TAR).is_file() or (d / VAL_TAR).is_file():
        return d
    return None


def _label_folders(root: Path, src: Path) -> list[Path]:
    """Where label files may be: ``root`` and each folder above it up to ``src``, and for a Kaggle
    download's ``ILSVRC/Data/CLS-LOC``, the folder that holds ``ILSVRC`` (even when ``src`` is inside it)."""
    rel = root.relative_to(src)
    folders = [root] + [src / p for p in rel.parents]
    top = Path(os.path.abspath(root)).parents[2] if Path(os.path.abspath(root)).match(KAGGLE_PATHS[0]) else None
    if top is not None and all(os.path.abspath(f) != str(top) for f in folders):
        folders.append(top)
    return folders


def _skipped_tests(root: Path, src: Path) -> list[dict]:
    found = [root / "test"] if (root / "test").is_dir() else []
    found += sorted(root.glob(TEST_TAR_GLOB))
    return [{"path": str(p.relative_to(src)), "reason": TEST_REASON} for p in found]


def _archive_stat(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return path.name, st.st_size, st.st_mtime_ns


def _train_split(root: Path, exclude: frozenset[str]) -> SourceSplit | None:
    """``root/train/<wnid>/...`` or ``root/ILSVRC2012_img_train.tar``; None when neither is there."""
    folder = root / "train"
    if folder.is_dir():
        if not class_folders(folder, exclude):
            tars = sorted(folder.glob("n*.tar"))
            if tars:
                raise UserError(f"{folder} holds per-class tars ({tars[0].name}, ...) and no class folders: extract "
                                f"each into {folder}/<wnid>/, or give the folder holding {TRAIN_TAR} (read in place)")
            what = "holds images but no class folders" if walk(folder, None, exclude)[0] else "has no class folders"
            raise UserError(f"{folder} {what} (expected {folder}/<wnid>/<image>, as ImageNet's train set)")
        return folder_split(folder, "train", labeled=True, exclude=exclude)
    archive = root / TRAIN_TAR
    if not archive.is_file():
        return None
    members, classes = index_nested(archive)
    label_of = {c: i for i, c in enumerate(classes)}
    found, labels, offsets = [], [], []
    for m in members:
        parts = m.path.split("/")
        if len(parts) < 2 or parts[0] not in label_of or any(p.startswith(".") for p in parts) or not is_image(m.path):
            continue
        found.append((m.path, m.size, 0))
        labels.append(label_of[parts[0]])
        offsets.append(m.offset)
    return make_split("train", archive, found, len(members) - len(found), labels, classes,
                      digest([], [_archive_stat(archive)]), archive=str(archive), offsets=offsets)


def _val_is_flat(root: Path, exclude: frozenset[str]) -> bool:
    folder = root / "val"
    if folder.is_dir():
        return not class_folders(folder, exclude)
    return (root / VAL_TAR).is_file()


def _flat_labels(where: Path, files: list[str], classes: list[str] | None,
                 labels: ImageNetLabels) -> tuple[list[int], list[str]]:
    """Labels of flat validation images (by file stem) and the class list (``classes``: train's; None:
    every wnid of the label file); one-line errors otherwise."""
    if labels.val_wnids is None:
        raise UserError(
            f"{where} holds images but no class folders, and nothing labels them: put {LABEL_FILES} "
            f"in {where.parent} (or a folder above it), or sort the images into <wnid>/ folders"
        )
    wnids = [labels.val_wnids.get(PurePosixPath(f).stem) for f in files]
    missing = [f for f, w in zip(files, wnids) if w is None]
    if missing:
        raise UserError(f"{where}/{missing[0]} has no label in {labels.val_source} ({len(missing)} such images); "
                        "remove them or use the matching label file")
    classes = classes if classes is not None else sorted(set(labels.val_wnids.values()))
    label_of = {c: i for i, c in enumerate(classes)}
    unknown = [w for w in wnids if w not in label_of]
    if unknown:
        raise UserError(f"{where}: class {unknown[0]} (from {labels.val_source}) is not a class of the train split "
                        f"({len(unknown)} such images)")
    return [label_of[w] for w in wnids], classes


def _val_split(root: Path, train: SourceSplit | None, labels: ImageNetLabels,
               exclude: frozenset[str]) -> SourceSplit | None:
    """``root/val`` (class folders or flat) or ``root/ILSVRC2012_img_val.tar``; None when neither is there."""
    classes = train.classes if train is not None else None
    folder, archive = root / "val", root / VAL_TAR
    if folder.is_dir() and class_folders(folder, exclude):
        return folder_split(folder, "val", labeled=True, classes=classes, exclude=exclude)
    extra = file_stats(labels.files)
    if folder.is_dir():
        links: list[dict] = []
        found, ignored = walk(folder, links, exclude)
        where, tree_digest, more = folder, digest(found, extra), {}
    elif archive.is_file():
        members = index_flat(archive)
        kept = [m for m in members if "/" not in m.path and not m.path.startswith(".") and is_image(m.path)]
        found, ignored, links = [(m.path, m.size, 0) for m in kept], len(members) - len(kept), []
        where, tree_digest = archive, digest([], [_archive_stat(archive), *extra])
        more = {"archive": str(archive), "offsets": [m.offset for m in kept]}
    else:
        return None
    if not found:
        return make_split("val", where, found, ignored, None, [], tree_digest)  # raises: no images
    val_labels, classes = _flat_labels(where, [f[0] for f in found], classes, labels)
    return make_split("val", where, found, ignored, val_labels, classes, tree_digest, links,
                      label_source=os.path.abspath(labels.val_source), **more)


def _form(root: Path, src: Path, splits: list[SourceSplit]) -> str:
    kaggle = any(os.path.normpath(src / rel) == os.path.normpath(root) for rel in KAGGLE_PATHS)
    form = "Kaggle download" if kaggle else ("archives" if any(s.archive for s in splits) else "folders")
    flat = [s for s in splits if s.label_source]
    return form + (f", val labels from {Path(flat[0].label_source).name}" if flat else "")


def imagenet_splits(root: Path, src: Path, exclude: frozenset[str] = frozenset()) -> ImageNetSource:
    """The ``train`` and ``val`` splits under ``root`` (found by :func:`find_imagenet_root` in ``src``)."""
    train = _train_split(root, exclude)
    labels = find_labels(_label_folders(root, src), need_val=_val_is_flat(root, exclude))
    val = _val_split(root, train, labels, exclude)
    splits = [s for s in (train, val) if s is not None]
    if not splits:
        raise UserError(f"{root} has neither train/ nor val/ (nor {TRAIN_TAR} / {VAL_TAR})")
    skipped = _skipped_tests(root, src)
    for s in splits:
        if labels.names and any(c in labels.names for c in s.classes):
            s.class_names = [labels.names.get(c) for c in s.classes]
        s.skipped_folders = skipped
    return ImageNetSource(splits, _form(root, src, splits), skipped)
