"""ImageNet's label sources: the class (wnid) of each flat validation image, and each wnid's human name.

ImageNet's validation images come flat (``val/ILSVRC2012_val_00000001.JPEG``); their labels live
in one of these files, looked for in a list of folders (the tree's root and the folders above it,
up to ``SRC``):

* Kaggle: ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first token of
  ``PredictionString`` is the wnid) and ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``).
* The devkit, as a folder ``ILSVRC2012_devkit_t12/`` or the archive ``ILSVRC2012_devkit_t12.tar.gz``
  (read in place): ``data/ILSVRC2012_validation_ground_truth.txt`` holds one ILSVRC2012_ID per
  image (line i = image i) and ``data/meta.mat`` maps those IDs to wnids through its ``synsets``
  struct (leaf synsets: ``num_children == 0``). The IDs are *not* in sorted-wnid order, so labels are
  always looked up through ``meta.mat``.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from dino_pipe.errors import UserError

SOLUTION_CSV = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
LABEL_FILES = f"{DEVKIT_TAR}, the folder {DEVKIT_DIR}/ or Kaggle's {SOLUTION_CSV}"


@dataclass
class ImageNetLabels:
    """What the label sources found (``val_wnids`` is None when no source labels the validation set)."""

    val_wnids: dict[str, str] | None = None  # image file stem -> wnid
    names: dict[str, str] = field(default_factory=dict)  # wnid -> human name ("tench, Tinca tinca")
    val_source: str | None = None  # the file that labels the validation images
    files: list[Path] = field(default_factory=list)  # every file read (their stats go into the tree digest)


def _first(folders: list[Path], *relpaths: str) -> Path | None:
    for folder in folders:
        for rel in relpaths:
            if (folder / rel).is_file():
                return folder / rel
    return None


def read_solution_csv(path: Path) -> dict[str, str]:
    """``LOC_val_solution.csv`` -> {image id: wnid}."""
    out = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            if not rows.fieldnames or not {"ImageId", "PredictionString"} <= set(rows.fieldnames):
                raise UserError(f"{path} has no ImageId,PredictionString header (is it Kaggle's {SOLUTION_CSV}?)")
            for row in rows:
                tokens = (row["PredictionString"] or "").split()
                if tokens:
                    out[row["ImageId"].strip()] = tokens[0]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    return out


def read_synset_mapping(path: Path) -> dict[str, str]:
    """``LOC_synset_mapping.txt`` -> {wnid: human name}."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    pairs = (line.strip().split(" ", 1) for line in lines if line.strip())
    return {p[0]: (p[1].strip() if len(p) > 1 else "") for p in pairs}


def parse_meta(data: bytes, where: str) -> tuple[dict[int, str], dict[str, str]]:
    """``meta.mat`` bytes -> ({ILSVRC2012_ID: wnid}, {wnid: words}) over the leaf synsets."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError(f"reading {where} needs scipy: pip install scipy (or use Kaggle's {SOLUTION_CSV})") from None
    try:
        synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        leaves = [s for s in synsets.ravel() if int(s["num_children"]) == 0]
        ids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
        words = {str(s["WNID"]): str(s["words"]) for s in leaves}
    except Exception as e:  # not a MAT file, no synsets struct, missing fields
        why = f"{type(e).__name__}: {e}"
        raise UserError(f"{where} is not the devkit's meta.mat with a synsets struct ({why})") from None
    return ids, words


def _devkit_bytes(folders: list[Path]) -> tuple[bytes, bytes | None, str, list[Path]] | None:
    """(meta.mat, ground truth or None, where, files) from a devkit folder or tar.gz; None when there is none."""
    meta = _first(folders, f"{DEVKIT_DIR}/{META}")
    if meta is not None:
        truth = meta.parent.parent / GROUND_TRUTH
        try:
            return meta.read_bytes(), truth.read_bytes() if truth.is_file() else None, str(meta.parent.parent), [meta]
        except OSError as e:
            raise UserError(f"cannot read {meta}: {e.strerror}") from None
    archive = _first(folders, DEVKIT_TAR)
    if archive is None:
        return None
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tf:
            for m in tf:
                for rel in (META, GROUND_TRUTH):
                    if m.isfile() and (m.name == rel or m.name.endswith("/" + rel)):
                        found[rel] = tf.extractfile(m).read()
    except (OSError, tarfile.TarError, EOFError) as e:
        raise UserError(f"cannot read {archive}: {e}; download it again") from None
    if META not in found:
        raise UserError(f"{archive} holds no {META}; is it the ILSVRC2012 devkit (task 1 & 2)?")
    return found[META], found.get(GROUND_TRUTH), str(archive), [archive]


def _val_from_devkit(meta: bytes, truth: bytes, where: str) -> dict[str, str]:
    ids, _ = parse_meta(meta, where)
    out = {}
    for i, line in enumerate(truth.decode("ascii", "replace").split(), start=1):
        try:
            out[f"ILSVRC2012_val_{i:08d}"] = ids[int(line)]
        except (ValueError, KeyError):
            raise UserError(f"{where}: line {i} of {GROUND_TRUTH} ({line!r}) is not a class ID of meta.mat") from None
    return out


def find_labels(folders: list[Path], need_val: bool) -> ImageNetLabels:
    """Read the label sources found in ``folders`` (first folder first).

    ``need_val``: the validation labels are needed (a flat ``val``); otherwise only names are looked
    for, and a devkit that cannot be read (no scipy) just gives no names.
    """
    labels = ImageNetLabels()
    mapping = _first(folders, SYNSET_MAPPING)
    if mapping is not None:
        labels.names, labels.files = read_synset_mapping(mapping), [mapping]
    solution = _first(folders, SOLUTION_CSV) if need_val else None
    if solution is not None:
        labels.val_wnids, labels.val_source = read_solution_csv(solution), str(solution)
        labels.files.append(solution)
    need_devkit = need_val and labels.val_wnids is None
    if labels.names and not need_devkit:
        return labels
    try:
        devkit = _devkit_bytes(folders)
        if devkit is None:
            return labels
        meta, truth, where, files = devkit
        if not labels.names:
            labels.names = parse_meta(meta, where)[1]
        if need_devkit and truth is not None:
            labels.val_wnids, labels.val_source = _val_from_devkit(meta, truth, where), where
    except UserError:
        if need_devkit:
            raise
        return labels
    labels.files += files
    return labels


def file_stats(files: list[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each label file, for the tree digest."""
    out = []
    for p in files:
        st = os.stat(p)
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return out
