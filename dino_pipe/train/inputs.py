"""What a training run is given, checked before anything heavy is imported (no torch, no DALI): the
``--data`` shard set (or ``synthetic[:N]``), the ``--out`` run folder, and the online k-NN pair that a
shard set with a labelled ``val/`` beside its ``train/`` brings by default.

The CLI calls these first, so a mistyped path is one line within a fraction of a second; the training
loop (:mod:`dino_pipe.train.loop`) calls them again on its own (they are cheap and idempotent).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from dino_pipe.config import Config
from dino_pipe.errors import UserError
from dino_pipe.lock import LOCK_NAME
from dino_pipe.train.run_dir import RUN_MARKER, is_run_dir


def parse_synthetic(data: str | Path) -> int | None:
    """``"synthetic"`` / ``"synthetic:N"`` -> N random samples per epoch (default 4096); else None."""
    s = str(data)
    if s == "synthetic":
        return 4096
    if s.startswith("synthetic:"):
        try:
            return int(s.split(":", 1)[1])
        except ValueError:
            raise UserError(f"--data {s}: expected synthetic:NUMBER_OF_SAMPLES") from None
    return None


def local_data(data: str | Path, cfg: Config, progress: bool = True) -> str | Path:
    """``s3://…``: fetch the set into the shard cache (``cfg.data.cache_*``) and return that folder, unless it
    is to be streamed (:func:`streams`; then the URL itself); anything else unchanged. A cached set is then
    read from local files only (no network during an epoch)."""
    if parse_synthetic(data) is not None or not _remote(data) or streams(data, cfg):
        return data
    from dino_pipe.shards.fetch import fetch_shardset
    from dino_pipe.storage.cache import CacheSettings

    return fetch_shardset(str(data), CacheSettings.from_config(cfg.data), progress=progress)


def _remote(data: str | Path) -> bool:
    from dino_pipe.storage.url import is_remote

    return is_remote(data)


def streams(data: str | Path, cfg: Config) -> bool:
    """Whether training streams ``data`` (``data.read_mode``: forced, or ``auto`` and an ``s3://`` set larger
    than the shard cache; see :func:`dino_pipe.shards.fetch.choose_read_mode`)."""
    if parse_synthetic(data) is not None:
        return False
    if cfg.data.read_mode == "stream":
        return True
    if not _remote(data) or cfg.data.read_mode == "cache":
        return False
    from dino_pipe.shards.fetch import choose_read_mode
    from dino_pipe.storage.cache import CacheSettings

    return choose_read_mode(str(data), cfg.data.read_mode, CacheSettings.from_config(cfg.data)) == "stream"


def _is_main_process() -> bool:
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def _say(text: str) -> None:
    """One line on stderr, once per job (rank 0), not per rank."""
    if _is_main_process():
        from dino_pipe.progress import console

        console.print(text, highlight=False, soft_wrap=True)


def check_data(data: str | Path) -> str | Path:
    """Fail early (before any process starts) when the shard set is missing; return the set to read.

    A parent folder as ``dino-pipe shard`` writes it (``train/`` and ``val/`` shard sets, no manifest
    of its own) means its ``train/`` set, as with ``verify``; the choice is printed in one line.
    """
    if parse_synthetic(data) is not None or _remote(data):  # a URL left by local_data is streamed
        return data
    p = Path(data)
    if not p.exists():
        raise UserError(f"--data {p}: no such shard set (make one with `dino-pipe shard`)")
    if p.is_dir() and not (p / "manifest.json").is_file():
        sets = sorted(c.name for c in p.iterdir() if (c / "manifest.json").is_file())
        if "train" in sets:
            _say(f"--data {p}: a parent of shard sets ({', '.join(sets)}); training on {p / 'train'}")
            return p / "train"
        if sets:
            raise UserError(f"--data {p}: not a shard set itself; it holds the shard sets {', '.join(sets)}: "
                            f"give one of them, e.g. --data {p / sets[0]}")
        raise UserError(f"--data {p}: not a shard set (no manifest.json; make one with `dino-pipe shard`)")
    return data


def check_run_dir(output: Path) -> None:
    """``--out`` is a new or empty folder, or a run of ours (then resumed); never a user's folder."""
    from dino_pipe.atomic import check_output_folder

    check_output_folder(output, "--out")
    if output.is_dir() and not is_run_dir(output) and any(p.name != LOCK_NAME for p in output.iterdir()):
        raise UserError(f"--out {output}: a non-empty folder that is not a dino-pipe run (no {RUN_MARKER} or "
                        "checkpoints/); choose a new or empty folder so nothing of yours is replaced")


#: the automatic online k-NN is for small sets: at most this many training images (the bank); an ImageNet-sized
#: bank would add a pass over the whole set every epoch, so there the pair is named explicitly
AUTO_KNN_MAX_SAMPLES = 100_000
#: ... and measures about this many times in a run at most (every epoch, or every few epochs when there are more)
AUTO_KNN_MAX_MEASUREMENTS = 10


def _labelled(folder: Path) -> tuple[list[str], int] | None:
    """(class names, samples) of a labelled local shard set, else None (unlabelled, missing, unreadable)."""
    from dino_pipe.shards.manifest import MANIFEST_NAME, read_manifest_file

    if not (folder / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = read_manifest_file(folder / MANIFEST_NAME)
    except UserError:
        return None
    classes, samples = manifest.get("classes") or [], int(manifest.get("num_samples", 0))
    return (list(classes), samples) if classes and samples else None


def default_online_knn(cfg: Config, data: str | Path, say: bool = True) -> Config:
    """``cfg`` with the online k-NN turned on when it is not configured, ``eval.online_knn_auto`` is true
    and ``data`` is a labelled local shard set (of at most :data:`AUTO_KNN_MAX_SAMPLES` images) with a
    labelled ``val/`` of the same classes beside it (as ``dino-pipe shard`` writes ``train/`` + ``val/``);
    else ``cfg`` unchanged.

    Step 0's value is the untrained network's, so the run's own k-NN curve starts at its baseline.
    """
    e = cfg.eval
    if not e.online_knn_auto or e.online_knn_train or e.online_knn_val or parse_synthetic(data) is not None:
        return cfg
    train_set = Path(data)
    val_set = train_set.parent / "val"
    if train_set.name == "val" or not val_set.is_dir():
        return cfg
    train_facts, val_facts = _labelled(train_set), _labelled(val_set)
    if train_facts is None or val_facts is None or val_facts[0] != train_facts[0]:
        return cfg
    if train_facts[1] > AUTO_KNN_MAX_SAMPLES:
        if say:
            _say(f"online k-NN not turned on by itself: {train_set} holds {train_facts[1]:,} images (more than "
                 f"{AUTO_KNN_MAX_SAMPLES:,}); set eval.online_knn_train and eval.online_knn_val to measure it")
        return cfg
    every_epochs = math.ceil(cfg.train.epochs / AUTO_KNN_MAX_MEASUREMENTS)
    every = e.online_knn_every_steps
    if not every and every_epochs > 1:  # many short epochs: every few epochs, not after each
        every = every_epochs * max(1, train_facts[1] // cfg.data.batch_size)
    if say:
        if e.online_knn_every_steps:
            when = f"every {every} steps"
        else:
            when = f"every {every_epochs} epochs" if every else "every epoch"
        _say(f"online k-NN on {train_set} (bank) and {val_set} (queries): the untrained network at step 0, then "
             f"{when} and at the end (eval.online_knn_auto=false turns it off)")
    new_eval = dataclasses.replace(e, online_knn_train=str(train_set), online_knn_val=str(val_set),
                                   online_knn_every_steps=every)
    return dataclasses.replace(cfg, eval=new_eval)
