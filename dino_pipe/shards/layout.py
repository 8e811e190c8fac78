"""Walking source trees: which files are images, which class each belongs to, and its sample key.

Three layouts (``layout="auto"`` picks the first that fits):

* ``imagenet``: ``SRC/train/<class>/...`` and optionally ``SRC/val/<class>/...``; two splits that
  share the class -> label mapping taken from ``train`` (``val`` may lack classes, not add them).
* ``imagefolder``: ``SRC/<class>/...`` (torchvision ``ImageFolder``): labels are the positions of
  the sorted class folder names; files below a class folder at any depth belong to it.
* ``unlabeled``: images anywhere under ``SRC`` (auto picks it when ``SRC`` itself holds images).

Hidden folders are not entered; hidden files (``.DS_Store``, ``._x.jpg``) and files whose
extension is not an image extension are *ignored* and counted. Paths are sorted, so everything
downstream is a deterministic function of the tree.

Symbolic links are followed when they stay inside the source tree; a link that leads outside it,
loops (to itself, or to a folder it sits in), is skipped and listed with the reason
(``skipped_links`` in the manifest), so a tree is walked once and only its own files are packed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dino_pipe.errors import UserError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
LAYOUTS = ("auto", "imagenet", "imagefolder", "unlabeled")
MAX_KEY_CHARS = 90  # "<key>.jpg" must fit the 100-byte ustar name field


@dataclass
class SourceSplit:
    """The images of one split (one future shard set), in sorted path order."""

    name: str | None  # "train", "val", or None for a single-split source
    root: Path  # the folder walked
    files: list[str]  # paths relative to ``root`` (POSIX separators), sorted
    sizes: list[int]  # bytes of each file (planning shard sizes)
    labels: list[int] | None  # per file, None when unlabeled
    classes: list[str]  # class names in label order ([] when unlabeled)
    ignored: int  # non-image files seen
    digest: str  # sha256 over (path, size, mtime) of every image: "has the tree changed?"
    keys: list[str] = field(default_factory=list)
    skipped_links: list[dict] = field(default_factory=list)  # [{path, reason}]: links not followed

    def __len__(self) -> int:
        return len(self.files)


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _link_problem(entry: os.DirEntry, real_root: str, ancestors: tuple[str, ...]) -> str | None:
    """Why the symlink ``entry`` is not followed (None: follow it). See the module docstring."""
    try:
        os.stat(entry.path)
    except FileNotFoundError:  # dangling: an image name is reported as unreadable by the writer
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (the link points back to itself)"
        return None
    target = os.path.realpath(entry.path)
    if os.path.commonpath([target, real_root]) != real_root:
        return f"symlink leads outside the source tree (to {target})"
    if target in ancestors:
        return f"symlink loops back to a folder it is in ({target})"
    return None


def _walk(root: Path, links: list[dict] | None = None) -> tuple[list[tuple[str, int, int]], int]:
    """All image files under ``root`` as (relative posix path, size, mtime_ns), and the ignored count.

    Symlinks that leave ``root`` or loop are not followed; ``links`` (when given) gets
    ``{path, reason}`` for each."""
    found: list[tuple[str, int, int]] = []
    ignored = 0
    real_root = os.path.realpath(root)
    stack = [(root, "", (real_root,))]
    while stack:
        folder, rel, ancestors = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise UserError(f"cannot list {folder}: {e.strerror}; check its permissions") from None
        for entry in entries:
            path = f"{rel}{entry.name}"
            hidden = entry.name.startswith(".")
            if entry.is_symlink() and not hidden and (problem := _link_problem(entry, real_root, ancestors)):
                if links is not None:
                    links.append({"path": path, "reason": problem})
                continue
            if entry.is_dir(follow_symlinks=True):
                if not hidden:
                    stack.append((Path(entry.path), path + "/", (*ancestors, os.path.realpath(entry.path))))
                continue
            if hidden or not _is_image(entry.name):
                ignored += 1
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:  # dangling link: let the writer report it as unreadable
                found.append((path, 0, 0))
                continue
            found.append((path, st.st_size, st.st_mtime_ns))
    found.sort()
    return found, ignored


def _digest(found: list[tuple[str, int, int]]) -> str:
    h = hashlib.sha256()
    for path, size, mtime in found:
        h.update(f"{path}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def class_folders(root: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``root`` (torchvision ``find_classes``)."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=True) and not e.name.startswith("."))


def _split(root: Path, name: str | None, labeled: bool, classes: list[str] | None = None) -> SourceSplit:
    links: list[dict] = []
    found, ignored = _walk(root, links)
    labels = None
    if labeled:
        own = class_folders(root)
        classes = own if classes is None else classes
        unknown = [c for c in own if c not in classes]
        if unknown:
            raise UserError(
                f"{root}: class folder '{unknown[0]}' is not a class of the train split ({len(unknown)} unknown)"
            )
        label_of = {c: i for i, c in enumerate(classes)}
        kept = [f for f in found if "/" in f[0]]
        ignored += len(found) - len(kept)  # images directly in root have no class
        found = kept
        labels = [label_of[f[0].split("/", 1)[0]] for f in found]
    if not found:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise UserError(f"no images found under {root} (looked for {exts})")
    split = SourceSplit(
        name=name,
        root=root,
        files=[f[0] for f in found],
        sizes=[f[1] for f in found],
        labels=labels,
        classes=list(classes or []),
        ignored=ignored,
        digest=_digest(found),
        skipped_links=sorted(links, key=lambda x: x["path"]),
    )
    split.keys = make_keys(split.files)
    return split


def detect_layout(src: Path) -> str:
    if (src / "train").is_dir():
        return "imagenet"
    entries = list(os.scandir(src))
    if any(e.is_file() and not e.name.startswith(".") and _is_image(e.name) for e in entries):
        return "unlabeled"
    if any(e.is_dir() and not e.name.startswith(".") for e in entries):
        return "imagefolder"
    raise UserError(f"no images found in {src} (expected train/<class>/..., <class>/... or image files)")


def find_splits(src: str | os.PathLike, layout: str = "auto") -> list[SourceSplit]:
    """Walk ``src`` and return its splits (``[train, val]``, ``[train]`` or ``[one split]``)."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"source folder {src} does not exist")
    if not src.is_dir():
        raise UserError(f"source {src} is not a folder (give the root of an image tree)")
    if layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got '{layout}'")
    if layout == "auto":
        layout = detect_layout(src)
    if layout == "unlabeled":
        return [_split(src, None, labeled=False)]
    if layout == "imagefolder":
        if not class_folders(src):
            raise UserError(f"{src} has no class folders (expected {src}/<class>/<image>)")
        return [_split(src, None, labeled=True)]
    train_root = src / "train"
    if not train_root.is_dir():
        raise UserError(f"{src} has no train/ folder (expected {src}/train/<class>/<image>)")
    if not class_folders(train_root):
        raise UserError(f"{train_root} has no class folders (expected {train_root}/<class>/<image>)")
    train = _split(train_root, "train", labeled=True)
    splits = [train]
    val_root = src / "val"
    if val_root.is_dir():
        if not class_folders(val_root) and _walk(val_root)[0]:
            raise UserError(
                f"{val_root} holds images but no class folders; sort them into {val_root}/<class>/ "
                "(as for ImageNet's validation set) or move them out"
            )
        splits.append(_split(val_root, "val", labeled=True, classes=train.classes))
    return splits


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sanitize_key(relpath: str) -> str:
    """``"n014/img.001.JPEG"`` -> ``"n014__img_001"``: no dots (webdataset splits on the first one),
    no slashes, ASCII only; long paths are shortened with a hash of the full path."""
    p = PurePosixPath(relpath)
    parts = [*p.parent.parts, p.stem] if str(p.parent) != "." else [p.stem]
    key = "__".join(_UNSAFE.sub("_", part) for part in parts) or "_"
    if len(key) > MAX_KEY_CHARS:
        key = f"{key[: MAX_KEY_CHARS - 10]}_{hashlib.sha1(relpath.encode('utf-8', 'surrogateescape')).hexdigest()[:9]}"
    return key


def make_keys(relpaths: list[str]) -> list[str]:
    """Unique, stable keys for sorted ``relpaths``: clashes after sanitizing get ``_2``, ``_3``, ..."""
    used: set[str] = set()
    keys = []
    for rel in relpaths:
        key = base = sanitize_key(rel)
        n = 2
        while key in used:
            key = f"{base}_{n}"
            n += 1
        used.add(key)
        keys.append(key)
    return keys
