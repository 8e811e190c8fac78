"""Walking source folders: which files are images, which class each belongs to, and its sample key.

The layouts (``layout="auto"`` picks one, see :mod:`dino_pipe.shards.source`):

* ``imagenet``: ``SRC/train/<class>/...`` and optionally ``SRC/val/...``; two splits that share the
  class -> label mapping taken from ``train`` (``val`` may lack classes, not add them). ImageNet's own
  forms (flat ``val`` + devkit, a Kaggle download, the archives) are in :mod:`dino_pipe.shards.imagenet`.
* ``imagefolder``: ``SRC/<class>/...`` (torchvision ``ImageFolder``): labels are the positions of
  the sorted class folder names; files below a class folder at any depth belong to it.
* ``unlabeled``: images anywhere under ``SRC`` (auto picks it when ``SRC`` itself holds images).

Hidden folders are not entered; hidden files (``.DS_Store``, ``._x.jpg``) and files whose
extension is not an image extension are *ignored* and counted. Paths are sorted, so everything
downstream is a deterministic function of the tree. Folders in ``exclude`` (the output folder when
it lies inside ``SRC``) are not entered.

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
    class_names: list[str | None] | None = None  # human names in label order (None: unknown)
    archive: str | None = None  # files are members of this uncompressed tar ...
    offsets: list[int] | None = None  # ... whose bytes start at these offsets (None: files under root)
    label_source: str | None = None  # the file that labels a flat split (devkit, Kaggle CSV)
    skipped_folders: list[dict] = field(default_factory=list)  # [{path, reason}]: source folders not used

    def __len__(self) -> int:
        return len(self.files)


def is_image(name: str) -> bool:
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


def walk(root: Path, links: list[dict] | None = None,
         exclude: frozenset[str] = frozenset()) -> tuple[list[tuple[str, int, int]], int]:
    """All image files under ``root`` as (relative posix path, size, mtime_ns), and the ignored count.

    Symlinks that leave ``root`` or loop are not followed; ``links`` (when given) gets
    ``{path, reason}`` for each. Folders whose real path is in ``exclude`` are not entered."""
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
                if not hidden and not (exclude and os.path.realpath(entry.path) in exclude):
                    stack.append((Path(entry.path), path + "/", (*ancestors, os.path.realpath(entry.path))))
                continue
            if hidden or not is_image(entry.name):
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


def digest(found: list[tuple[str, int, int]], extra: list[tuple[str, int, int]] = ()) -> str:
    """sha256 over (path, size, mtime) of every listed file (and of ``extra``: label files, archives)."""
    h = hashlib.sha256()
    for path, size, mtime in [*found, *extra]:
        h.update(f"{path}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def class_folders(root: Path, exclude: frozenset[str] = frozenset()) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``root`` (torchvision ``find_classes``), but ``exclude``."""
    try:
        entries = list(os.scandir(root))
    except OSError as e:
        raise UserError(f"cannot list {root}: {e.strerror}; check its permissions") from None
    return sorted(
        e.name for e in entries if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")
        and not (exclude and os.path.realpath(e.path) in exclude)
    )


def folder_split(root: Path, name: str | None, labeled: bool, classes: list[str] | None = None,
                 exclude: frozenset[str] = frozenset()) -> SourceSplit:
    """The split of the folder ``root``: labelled by class folder (``classes``: the label order, default
    ``root``'s own class folders) or unlabelled."""
    links: list[dict] = []
    found, ignored = walk(root, links, exclude)
    labels = None
    if labeled:
        own = class_folders(root, exclude)
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
    return make_split(name, root, found, ignored, labels, list(classes or []), digest(found), links)


def make_split(name: str | None, root: Path, found: list[tuple[str, int, int]], ignored: int,
               labels: list[int] | None, classes: list[str], tree_digest: str, links: list[dict] | None = None,
               **extra) -> SourceSplit:
    """A :class:`SourceSplit` from a sorted listing ``(path, size, _)``; UserError when it is empty."""
    if not found:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise UserError(f"no images found under {root} (looked for {exts})")
    split = SourceSplit(
        name=name,
        root=root,
        files=[f[0] for f in found],
        sizes=[f[1] for f in found],
        labels=labels,
        classes=classes,
        ignored=ignored,
        digest=tree_digest,
        skipped_links=sorted(links or [], key=lambda x: x["path"]),
        **extra,
    )
    split.keys = make_keys(split.files)
    return split


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
