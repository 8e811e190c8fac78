"""``dino-pipe verify``: re-read a shard set and name every bad shard and sample.

Three stages per shard set:

1. **Structure** (threads, one shard each): the tar exists, its size and sha256 match the
   manifest, its headers parse (checksums, bounds), every sample has one image and, when the set
   is labeled, a ``.cls`` integer in ``[0, len(classes))``; keys are unique; the sample count
   matches the manifest; the ``.idx`` exists and equals the index rebuilt from the tar.
2. **JPEG data**: every JPEG through :func:`~dino_pipe.shards.image.jpeg_problem` (threads): a file
   cut inside its last scan with an end-of-image marker appended, which DALI only warns about.
3. **Decode**: every image through DALI's decoder (``device="mixed"`` where CUDA is present,
   CPU otherwise), first in one pipeline over all shards (``fn.readers.webdataset``). A corrupt
   image is a fatal DALI pipeline error that names no sample, so when that pipeline fails each
   shard gets its own pipeline, and in a failing shard each image is decoded alone
   (``fn.external_source``) to name the bad samples. The pipelines run in child processes
   (:mod:`dino_pipe.shards.dali_decode`) because DALI's error path sometimes segfaults.

Shard sets written by other tools work too: without ``manifest.json`` the folder's ``*.tar`` are
checked (structure, index, decode) and the report says there was no manifest. A parent folder
holding several sets (``train/``, ``val/``) is verified set by set.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from dino_pipe.device import dali_decoder, resolve_device
from dino_pipe.errors import UserError
from dino_pipe.shards.dali_decode import run_decode_tasks
from dino_pipe.shards.image import jpeg_problem
from dino_pipe.shards.index import IndexFormatError, format_index, group_samples, parse_index
from dino_pipe.shards.journal import file_sha256
from dino_pipe.shards.manifest import MANIFEST_NAME, read_manifest_file
from dino_pipe.shards.tar import TarFormatError, read_members, split_name

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "jp2", "pnm", "ppm", "pgm")


@dataclass
class ShardCheck:
    """What stage 1 learned about one shard, and its problems so far."""

    file: str
    index: str
    samples: int = 0
    images: int = 0  # samples with exactly one image member
    image_exts: set[str] = field(default_factory=set)
    decode_index: str | None = None  # idx to give DALI (the shard's own, or a rebuilt one)
    problems: list[tuple[str | None, str]] = field(default_factory=list)  # (sample key or None, text)
    readable: bool = False  # tar parsed: stage 2 can decode it


def find_shard_sets(root: Path) -> list[Path]:
    """``root`` itself when it holds a manifest or tars, else its sub-folders that do."""
    def is_set(p: Path) -> bool:
        return (p / MANIFEST_NAME).is_file() or any(p.glob("*.tar"))

    if is_set(root):
        return [root]
    return [d for d in sorted(root.iterdir()) if d.is_dir() and is_set(d)]


def unsafe_member_name(name: str) -> bool:
    """An absolute path or a ``..`` component: extracting the tar could write outside the folder."""
    return name.startswith("/") or name[1:3] == ":\\" or ".." in PurePosixPath(name.replace("\\", "/")).parts


def _check_structure(folder: Path, entry: dict, manifest: dict | None, tmp: Path) -> ShardCheck:
    check = ShardCheck(entry["file"], entry.get("index") or Path(entry["file"]).with_suffix(".idx").name)
    try:
        return _check_structure_of(check, folder, entry, manifest, tmp)
    except OSError as e:  # unreadable tar or index (permissions, I/O error): a bad shard, not a crash
        check.readable = False
        check.problems.append((None, f"cannot read {Path(e.filename).name if e.filename else 'it'}: {e.strerror or e}"))
        return check


def _check_structure_of(check: ShardCheck, folder: Path, entry: dict, manifest: dict | None, tmp: Path) -> ShardCheck:
    tar = folder / check.file
    if not tar.is_file():
        check.problems.append((None, "tar file is missing"))
        return check
    size = tar.stat().st_size
    if manifest is not None:
        if size != entry["bytes"]:
            check.problems.append((None, f"size {size} bytes, manifest says {entry['bytes']}"))
        elif file_sha256(tar) != entry["sha256"]:
            check.problems.append((None, "sha256 does not match the manifest (the file changed or is corrupt)"))
    try:
        with open(tar, "rb") as f:
            members = list(read_members(f, size))
            for m in members:
                if unsafe_member_name(m.name):
                    check.problems.append((None, f"unsafe member name {m.name!r} (absolute or with '..'): "
                                                 "extracting this tar could write outside its folder"))
            samples = group_samples(members)
            labeled = manifest["labeled"] if manifest is not None else None
            n_classes = len(manifest["classes"]) if manifest is not None else None
            keys = set()
            for sample in samples:
                key = split_name(sample[0][3])[0]
                if key in keys:
                    check.problems.append(
                        (key, "key appears twice (members of a sample must be adjacent and keys unique)")
                    )
                keys.add(key)
                exts = {e[0]: e for e in sample}
                imgs = [e for ext, e in exts.items() if ext.lower() in IMAGE_EXTS]
                if len(imgs) != 1:
                    check.problems.append((key, f"has {len(imgs)} image members ({', '.join(sorted(exts))})"))
                else:
                    check.images += 1
                    check.image_exts.add(imgs[0][0])
                cls = exts.get("cls")
                if labeled and cls is None:
                    check.problems.append((key, "no .cls label in a labeled set"))
                if cls is not None:
                    f.seek(cls[1])
                    text = f.read(cls[2]).strip()
                    if not text.isdigit() or (n_classes is not None and int(text) >= n_classes):
                        check.problems.append((key, f".cls is {text[:20]!r}, not a label in 0..{(n_classes or 0) - 1}"))
    except TarFormatError as e:
        check.problems.append((None, f"not a readable tar: {e}"))
        return check
    check.samples = len(samples)
    check.readable = True
    if manifest is not None and entry.get("samples") != check.samples:
        check.problems.append((None, f"holds {check.samples} samples, manifest says {entry.get('samples')}"))
    expected = format_index(samples)
    idx = folder / check.index
    if not idx.is_file():
        check.problems.append((None, f"index {check.index} is missing"))
    else:
        try:
            found = parse_index(idx.read_text(encoding="utf-8"))
            if found != [list(s) for s in samples]:
                first = next(
                    (i for i, (a, b) in enumerate(zip(found, samples)) if a != list(b)), min(len(found), len(samples))
                )
                check.problems.append(
                    (None, f"index {check.index} does not match the tar (first difference at sample {first})")
                )
            else:
                check.decode_index = str(idx)
        except (IndexFormatError, UnicodeDecodeError) as e:
            check.problems.append((None, f"index {check.index} is unreadable: {e}"))
    if check.decode_index is None and samples:
        rebuilt = tmp / (check.file.replace("/", "_") + ".idx")
        rebuilt.write_text(expected)
        check.decode_index = str(rebuilt)
    return check


# ---------------------------------------------------------------- DALI decoding


def cuda_available() -> bool:
    """A CUDA device is visible to DALI (asked without importing torch)."""
    try:
        from nvidia.dali.backend import GetCUDADeviceCount

        return GetCUDADeviceCount() > 0
    except Exception:
        return False


def decoder_for(device: str) -> str:
    """``--device auto|cpu|cuda`` (or ``gpu``) -> DALI's image decoder backend, ``"mixed"`` or ``"cpu"``."""
    return dali_decoder(resolve_device(device, has_cuda=cuda_available))


def _image_members(tar: Path) -> list[tuple[str, str, int, int]]:
    """(key, member name, data offset, size) of each sample's image in a (parseable) tar."""
    with open(tar, "rb") as f:
        samples = group_samples(read_members(f, tar.stat().st_size))
    out = []
    for sample in samples:
        imgs = [e for e in sample if e[0].lower() in IMAGE_EXTS]
        if len(imgs) == 1:
            out.append((split_name(imgs[0][3])[0], imgs[0][3], imgs[0][1], imgs[0][2]))
    return out


def _check_jpegs(folder: Path, check: ShardCheck, advance: Callable[[int], None]) -> None:
    """The checks DALI cannot make, on every JPEG of a readable shard: truncated, or cut inside its
    last scan with an end-of-image marker appended (libjpeg and DALI only warn and fill in gray).
    Costs about one 1/8-scale decode per image; PIL releases the GIL, so shards run in parallel."""
    tar = folder / check.file
    try:
        with open(tar, "rb") as f:
            for key, name, offset, size in _image_members(tar):
                if name.lower().endswith((".jpg", ".jpeg")):
                    f.seek(offset)
                    why = jpeg_problem(f.read(size))
                    if why:
                        check.problems.append((key, why))
                advance(1)
    except OSError as e:
        check.problems.append((None, f"cannot read it: {e.strerror or e}"))


def _shards_task(folder: Path, checks: list[ShardCheck], exts: str) -> dict:
    return {"kind": "shards", "paths": [str(folder / c.file) for c in checks],
            "index_paths": [c.decode_index for c in checks], "exts": exts}


def _decode_with_dali(
    folder: Path, readable: list[ShardCheck], exts: str, device: str, threads: int, advance, restart
) -> None:
    """Decode every image of ``readable`` with DALI; add a problem to each image that fails.

    One pipeline over all shards first; if it fails, one per shard; inside failing shards, one
    image at a time (all in child processes, see :mod:`dino_pipe.shards.dali_decode`).
    """
    if not readable or run_decode_tasks([_shards_task(folder, readable, exts)], device, threads, advance) == [None]:
        return
    restart()
    per_shard = run_decode_tasks([_shards_task(folder, [c], exts) for c in readable], device, threads, advance)
    for check, why in zip(readable, per_shard):
        if why is None:
            continue
        images = _image_members(folder / check.file)
        tasks = [{"kind": "image", "path": str(folder / check.file), "offset": offset, "size": size}
                 for _, _, offset, size in images]
        per_image = run_decode_tasks(tasks, device, 1)
        bad = [(key, f"DALI cannot decode {name}: {r}") for (key, name, _, _), r in zip(images, per_image) if r]
        check.problems += bad or [(None, f"DALI fails on this shard ({why}) but on none of its images alone")]


# ---------------------------------------------------------------- one set / the command


def verify_set(folder: Path, workers: int, device: str, progress) -> dict:
    """Verify one shard set folder, decoding with DALI's ``device`` decoder (``"mixed"`` or ``"cpu"``, see
    :func:`decoder_for`); returns its report (``ok``, counts, ``problems``)."""
    problems: list[dict] = []
    manifest = None
    has_manifest = (folder / MANIFEST_NAME).is_file()
    if has_manifest:
        try:
            manifest = read_manifest_file(folder / MANIFEST_NAME)
        except UserError as e:
            problems.append({"shard": None, "sample": None, "problem": str(e)})
    if manifest is not None:
        entries = manifest["shards"]
        listed = {s["file"] for s in entries}
        extra = sorted(p.name for p in folder.glob("*.tar") if p.name not in listed)
    else:
        entries = [{"file": p.name} for p in sorted(folder.glob("*.tar"))]
        extra = []
    with tempfile.TemporaryDirectory(prefix="dino-pipe-verify-") as tmp:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            checks = list(pool.map(lambda e: _check_structure(folder, e, manifest, Path(tmp)), entries))
        if manifest is not None and sum(c.samples for c in checks) != manifest["num_samples"]:
            problems.append(
                {
                    "shard": None,
                    "sample": None,
                    "problem": f"shards hold {sum(c.samples for c in checks)} samples, "
                    f"manifest num_samples is {manifest['num_samples']}",
                }
            )
        readable = [c for c in checks if c.readable and c.images]
        exts = ";".join(sorted(set().union(*(c.image_exts for c in readable))))
        n_images = sum(c.images for c in readable)
        jpeg_task = progress.add_task(f"check JPEGs {folder.name}", total=n_images)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda c: _check_jpegs(folder, c, lambda n: progress.advance(jpeg_task, n)), readable))
        task = progress.add_task(f"verify {folder.name}", total=n_images)
        _decode_with_dali(folder, readable, exts, device, workers, lambda n: progress.advance(task, n),
                          lambda: progress.reset(task, total=n_images))
    for c in checks:
        for sample, text in c.problems:
            problems.append({"shard": c.file, "sample": sample, "problem": text})
    bad_shards = sorted({p["shard"] for p in problems if p["shard"]})
    return {
        "path": str(folder),
        "manifest": has_manifest,
        "ok": not problems,
        "shards": len(checks),
        "samples": sum(c.samples for c in checks),
        "decoded": n_images - sum(1 for p in problems if p["problem"].startswith("DALI cannot decode")),
        "bad_shards": bad_shards,
        "bad_samples": sorted({f"{p['shard']}:{p['sample']}" for p in problems if p["sample"]}),
        "extra_tars": extra,
        "problems": problems,
        "device": device,
    }


def verify_shardset(path: str | os.PathLike, workers: int = 0, device: str = "auto", progress: bool = True) -> dict:
    """``dino-pipe verify``: check one shard set, or each set under a parent folder.

    ``device``: ``auto`` (nvJPEG, DALI's ``mixed`` decoder, when CUDA is present, else ``cpu``), ``cpu`` or
    ``cuda``; each set's report names the decoder (``"device": "mixed"`` or ``"cpu"``).
    Returns ``{"path", "ok", "sets": [report per set]}``; UserError when there is nothing to verify.
    """
    from dino_pipe.progress import make_progress
    from dino_pipe.shards.options import default_workers

    root = Path(path)
    if not root.exists():
        raise UserError(f"shard set folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder (give a shard set folder, or a parent of train/ and val/)")
    decoder = decoder_for(device)
    sets = find_shard_sets(root)
    if not sets:
        raise UserError(f"{root} holds no shard set (no {MANIFEST_NAME} or *.tar here or in its sub-folders)")
    workers = workers or default_workers()
    with make_progress("img", disable=not progress) as bar:
        reports = [verify_set(folder, workers, decoder, bar) for folder in sets]
    return {"path": str(root), "ok": all(r["ok"] for r in reports), "sets": reports}
