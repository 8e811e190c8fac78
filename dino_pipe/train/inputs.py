"""What a training run is given, checked before anything heavy is imported (no torch, no DALI): the
``--out`` run folder, and the online k-NN pair that a shard set with a labelled ``val/`` beside its
``train/`` brings by default (``--data`` itself is checked by :mod:`dino_pipe.data.inputs`).

The CLI calls these first, so a mistyped path is one line within a fraction of a second; the training
loop (:mod:`dino_pipe.train.loop`) calls them again on its own (they are cheap and idempotent).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from dino_pipe.config import Config
from dino_pipe.data.inputs import parse_synthetic
from dino_pipe.errors import UserError
from dino_pipe.lock import LOCK_NAME
from dino_pipe.progress import say_once
from dino_pipe.runs.run_dir import RUN_MARKER, is_run_dir


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
    if not e.online_knn_auto or e.online_knn_on or parse_synthetic(data) is not None:
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
            say_once(f"online k-NN not turned on by itself: {train_set} holds {train_facts[1]:,} images (more than "
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
        say_once(f"online k-NN on {train_set} (bank) and {val_set} (queries): the untrained network at step 0, then "
             f"{when} and at the end (eval.online_knn_auto=false turns it off)")
    new_eval = dataclasses.replace(e, online_knn_train=str(train_set), online_knn_val=str(val_set),
                                   online_knn_every_steps=every)
    return dataclasses.replace(cfg, eval=new_eval)
