"""What ``dino-pipe shard SRC`` reads: the layout of ``SRC`` recognised, and its splits.

``layout="auto"`` looks at ``SRC`` and, while ``SRC`` is only a wrapper (one folder and no images),
at the folder inside it:

1. ImageNet in any of its forms (:mod:`dino_pipe.shards.imagenet`): ``train/`` or ``val/``, a Kaggle
   download's ``ILSVRC/Data/CLS-LOC``, or the train/val archives -> layout ``imagenet``;
2. images directly in ``SRC`` -> ``unlabeled``;
3. class folders -> ``imagefolder``.

A download wrapper or split folder (``train``, ``val``, ``test``, ``ILSVRC``, ``Data``, ``CLS-LOC``)
is never taken for a class, nor is a lone folder taken for a one-class set: that stops with one
line saying what was found and what to do. Each decision worth knowing (a wrapper descended,
``test/`` skipped, the output folder left out) is one line of ``notes``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dino_pipe.errors import UserError
from dino_pipe.shards.archive import TRAIN_TAR
from dino_pipe.shards.imagenet import find_imagenet_root, imagenet_splits
from dino_pipe.shards.layout import LAYOUTS, SourceSplit, class_folders, folder_split, is_image

WRAPPER_NAMES = frozenset({"train", "val", "validation", "test", "ILSVRC", "Data", "CLS-LOC", "ILSVRC2012"})
MAX_WRAPPERS = 3  # how many single-folder levels auto-detection descends


@dataclass
class SourceTree:
    """The recognised source: its splits, layout, form, and one-line notes for the user."""

    splits: list[SourceSplit]
    layout: str  # imagenet | imagefolder | unlabeled
    form: str = "folders"  # for imagenet: folders, Kaggle download, archives (+ where val labels come from)
    root: Path | None = None  # where the layout was found (SRC or a folder inside it)
    notes: list[str] = field(default_factory=list)


def _entries(d: Path, exclude: frozenset[str]) -> tuple[list[str], bool]:
    """(non-hidden sub-folders but ``exclude``, whether ``d`` itself holds image files)."""
    try:
        entries = list(os.scandir(d))
    except OSError as e:
        raise UserError(f"cannot list {d}: {e.strerror}; check its permissions") from None
    images = any(e.is_file() and not e.name.startswith(".") and is_image(e.name) for e in entries)
    return class_folders(d, exclude), images


def _descend(src: Path, exclude: frozenset[str]) -> tuple[Path, list[str], bool, Path | None]:
    """Go down single-folder wrappers until a layout shows: (folder, its sub-folders, holds images, imagenet root)."""
    d = src
    for depth in range(MAX_WRAPPERS + 1):
        root = find_imagenet_root(d)
        dirs, images = _entries(d, exclude)
        if root is not None or images or len(dirs) != 1 or depth == MAX_WRAPPERS:
            return d, dirs, images, root
        d = d / dirs[0]
    raise AssertionError("unreachable")


def _auto(src: Path, exclude: frozenset[str]) -> SourceTree:
    d, dirs, images, root = _descend(src, exclude)
    notes = [f"{src} holds only the folder {d.relative_to(src)}: reading it"] if d != src else []
    if root is not None:
        found = imagenet_splits(root, src, exclude)
        return SourceTree(found.splits, "imagenet", found.form, root, notes + _skip_notes(found.skipped_folders))
    if images and d != src:
        raise UserError(f"{src} holds only the folder {d.relative_to(src)} (one class is not a labelled set); "
                        f"shard {d} itself for an unlabelled set, or add a folder per class")
    if images:
        split_note = [f"{src} looks like a split folder of a labelled set: sharded without labels (point SRC at the "
                      "folder that holds it for labels)"] if src.resolve().name in WRAPPER_NAMES else []
        return SourceTree([folder_split(src, None, labeled=False, exclude=exclude)], "unlabeled", root=src,
                          notes=split_note)
    wrappers = [x for x in dirs if x in WRAPPER_NAMES]
    if wrappers:
        raise UserError(f"{d} holds the folder '{wrappers[0]}', a download or split folder, not a class "
                        f"(expected ImageNet's train/ and val/, a Kaggle download or {TRAIN_TAR}); "
                        "point SRC at the folder that holds train/ and val/ (or give --layout imagefolder "
                        "if it really is a class)")
    if len(dirs) == 1:
        raise UserError(f"{d} holds only the folder {dirs[0]} (one class is not a labelled set); "
                        f"shard {d / dirs[0]} for an unlabelled set, or add a folder per class")
    if not dirs:
        raise UserError(f"no images found in {src} (expected train/<class>/..., <class>/... or image files)")
    return SourceTree([folder_split(d, None, labeled=True, exclude=exclude)], "imagefolder", root=d, notes=notes)


def _skip_notes(skipped: list[dict]) -> list[str]:
    return [f"skipped {s['path']}: {s['reason']}" for s in skipped]


def find_source(src: str | os.PathLike, layout: str = "auto", exclude: frozenset[str] = frozenset()) -> SourceTree:
    """Recognise ``src`` (see the module docstring); folders whose real path is in ``exclude`` are not read."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"source folder {src} does not exist")
    if not src.is_dir():
        hint = f"give the folder that holds {src.name}" if src.suffix == ".tar" else "give the root of an image tree"
        raise UserError(f"source {src} is not a folder ({hint})")
    if layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got '{layout}'")
    if layout == "auto":
        return _auto(src, exclude)
    if layout == "unlabeled":
        return SourceTree([folder_split(src, None, labeled=False, exclude=exclude)], "unlabeled", root=src)
    if layout == "imagefolder":
        if not class_folders(src, exclude):
            raise UserError(f"{src} has no class folders (expected {src}/<class>/<image>)")
        return SourceTree([folder_split(src, None, labeled=True, exclude=exclude)], "imagefolder", root=src)
    d, _, _, root = _descend(src, exclude)
    if root is None:
        raise UserError(f"{src} has no train/ folder (expected {src}/train/<class>/<image>, a Kaggle download "
                        f"or {TRAIN_TAR})")
    found = imagenet_splits(root, src, exclude)
    notes = [f"{src} holds only the folder {d.relative_to(src)}: reading it"] if d != src else []
    return SourceTree(found.splits, "imagenet", found.form, root, notes + _skip_notes(found.skipped_folders))


def find_splits(src: str | os.PathLike, layout: str = "auto") -> list[SourceSplit]:
    """The splits of ``src`` (``[train, val]``, ``[train]`` or ``[one split]``); see :func:`find_source`."""
    return find_source(src, layout).splits
