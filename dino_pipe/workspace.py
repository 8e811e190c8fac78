"""What is in the current folder: the shard sets under ``./shards``, the runs under ``./runs``.

The commands' defaults come from here, so that ``dino-pipe shard ./imagenet``, ``dino-pipe train --gpus 8``
and ``dino-pipe eval knn`` work as typed, one after the other, in the same folder:

* ``train`` without ``--data`` trains on the one shard set under ``./shards`` (its ``train/`` set when it is a
  parent of ``train/`` and ``val/`` sets, as ``dino-pipe shard`` writes them); several are a one-line error
  listing them;
* ``train`` without ``--out`` uses ``./runs/<set>-<preset>``: the run of the same shard set and config is
  resumed (or reported finished), a different one is kept and ``<set>-<preset>-2`` (``-3`` …) is used;
* ``eval``, ``viz`` and ``export`` without ``--checkpoint`` read the latest run under ``./runs`` (the one whose
  newest checkpoint was written last) and evaluate it on the sets it was trained from: the ``train/`` set
  noted in its ``data.json`` and the ``val/`` set beside it.

Each choice is printed as one line on stderr by the caller (:attr:`Choice.note`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dino_pipe.errors import UserError

SHARDS = Path("shards")
"""Where ``dino-pipe shard`` writes by default (``shards/<name of SRC>``)."""
RUNS = Path("runs")
"""Where ``dino-pipe train`` makes run folders by default."""


@dataclass(frozen=True)
class ShardSets:
    """A shard set under ``./shards`` that training can use: its name, its train set, its val set (or None)."""

    name: str
    train: Path
    val: Path | None


def _is_set(folder: Path) -> bool:
    return (folder / "manifest.json").is_file()


def find_shard_sets(root: Path = SHARDS) -> list[ShardSets]:
    """The shard sets under ``root``: each parent of ``train/`` (+ ``val/``) sets, and each lone set."""
    if not root.is_dir():
        return []
    found = []
    for folder in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        if _is_set(folder / "train"):
            val = folder / "val"
            found.append(ShardSets(folder.resolve().name, folder / "train", val if _is_set(val) else None))
        elif _is_set(folder) and not (folder.name in ("train", "val") and _is_set(root / "train")):
            found.append(ShardSets(folder.resolve().name, folder, None))
    return found


def default_data(root: Path = SHARDS) -> ShardSets:
    """The one shard set under ``root``; none or several are a one-line UserError saying what to do."""
    sets = find_shard_sets(root)
    if len(sets) == 1:
        return sets[0]
    if not sets:
        raise UserError(f"no --data given and no shard set under ./{root}: make one with `dino-pipe shard ./imagenet` "
                        "(written to shards/imagenet), or give --data")
    names = ", ".join(str(s.train) for s in sets)
    raise UserError(f"no --data given and {len(sets)} shard sets under ./{root} ({names}): choose one with --data")


def preset_name(config: str | Path | None) -> str:
    """The name of a preset for run folders: ``configs/vit_small_best.yaml`` -> ``vit_small_best``."""
    from dino_pipe.config import DEFAULT_PRESET

    return Path(config).stem if config else DEFAULT_PRESET


def _same_run(run: Path, data: Path | str, cfg, extend: bool) -> bool:
    """``run`` is the run of shard set ``data`` with config ``cfg`` (its per-process batch aside when the
    config states a global batch: that follows from the process count, which the resume checks itself)."""
    import yaml

    from dino_pipe.config import config_from_dict
    from dino_pipe.runs.run_dir import config_differences, data_key, recorded_data

    data = _local(data, cfg)
    if not _is_set(Path(data)) and _is_set(Path(data) / "train"):  # a parent of sets: train reads its train/
        data = Path(data) / "train"
    if recorded_data(run) != data_key(data):
        return False
    try:
        old = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()) or {}).to_dict()
    except (OSError, yaml.YAMLError, UserError):
        return False
    if old["data"]["global_batch_size"] != cfg.data.global_batch_size:
        return False
    diffs = config_differences(old, cfg.to_dict())
    ignore = ("train.epochs:",) if extend else ()
    if cfg.data.global_batch_size > 0:
        ignore += ("data.batch_size:",)
    return not [d for d in diffs if not d.startswith(ignore)]


def _local(data: Path | str, cfg) -> Path | str:
    """Where training reads ``data`` from: an ``s3://`` set's folder in the shard cache, else ``data``."""
    from dino_pipe.storage.url import is_remote

    if not is_remote(str(data)):
        return data
    from dino_pipe.storage.cache import CacheSettings, cache_folder

    return cache_folder(CacheSettings.from_config(cfg.data), str(data))


@dataclass(frozen=True)
class Choice:
    """A default the workspace chose, and the line that tells the user."""

    path: Path
    note: str


def default_run_folder(data: ShardSets | Path | str, config: str | Path | None, cfg, extend: bool = False,
                       root: Path = RUNS) -> Choice:
    """``root/<set>-<preset>``, or the first ``-N`` suffix that is new or the same run (resumed)."""
    from dino_pipe.runs.run_dir import is_run_dir

    name, train = (data.name, data.train) if isinstance(data, ShardSets) else (_set_name(data), data)
    base = f"{name}-{preset_name(config)}"
    for n in range(1, 1000):
        run = root / (base if n == 1 else f"{base}-{n}")
        if not run.exists() or (run.is_dir() and not any(run.iterdir())):
            return Choice(run, f"run folder: {run} (new; --out to choose)")
        if is_run_dir(run) and _same_run(run, train, cfg, extend):
            return Choice(run, f"run folder: {run} (the same data and config: resuming it; --out to choose)")
    raise UserError(f"no free run folder {root / base}-N under ./{root}; give --out")


def _set_name(data: Path) -> str:
    """A name for a shard set given as --data: its folder, or its parent's for a train/ set."""
    if str(data).startswith("synthetic"):
        return str(data).replace(":", "")
    p = Path(str(data).split("://", 1)[-1]) if "://" in str(data) else Path(data).resolve()
    return p.parent.name if p.name in ("train", "val") else p.name


def latest_run(root: Path = RUNS) -> Path:
    """The run under ``root`` whose newest checkpoint was written last; none is a one-line UserError."""
    from dino_pipe.runs.run_dir import is_run_dir, list_checkpoints

    def written(run: Path) -> float:
        ckpts = list_checkpoints(run)
        return (ckpts[-1] if ckpts else run).stat().st_mtime

    runs = [p for p in root.iterdir() if p.is_dir() and is_run_dir(p)] if root.is_dir() else []
    with_ckpt = [p for p in runs if list_checkpoints(p)]
    if not with_ckpt:
        what = "no run with a checkpoint" if runs else "no run"
        raise UserError(f"no --checkpoint given and {what} under ./{root}: train one with `dino-pipe train`, "
                        "or give --checkpoint")
    return max(with_ckpt, key=written)


def run_of(checkpoint: Path) -> Path | None:
    """The run folder of a checkpoint file or run folder (None when it is a loose file)."""
    from dino_pipe.runs.run_dir import is_run_dir

    p = Path(checkpoint)
    for candidate in (p, p.parent.parent):
        if candidate.is_dir() and is_run_dir(candidate):
            return candidate
    return None


def run_sets(run: Path) -> tuple[Path, Path]:
    """The labelled train set a run was trained on and the val set beside it; a one-line UserError otherwise."""
    from dino_pipe.runs.run_dir import DATA_RECORD, recorded_data

    data = recorded_data(run)
    if data is None or data.startswith("synthetic"):
        why = f"has no {DATA_RECORD} (made by an older dino-pipe)" if data is None else f"trained on {data}"
        raise UserError(f"run {run} {why}: give --train and --val (labelled shard sets)")
    train = Path(data)
    val = train.parent / "val"
    if not _is_set(val):
        raise UserError(f"run {run} trained on {train}, which has no val/ shard set beside it: give --train and --val")
    return train, val


def eval_inputs(checkpoint: Path | None, train: str | None, val: str | None,
                need_data: bool = True) -> tuple[Path, str | None, str | None, Path | None, list[str]]:
    """The defaults of every command that reads a run: (checkpoint, train set, val set, run folder, notes).

    No ``--checkpoint``: the latest run under ``./runs``. No ``--train``/``--val`` (when ``need_data``): the
    sets that run was trained from. The run folder is where results go by default (None for a loose file).
    """
    notes = []
    if checkpoint is None:
        checkpoint = latest_run()
        notes.append(f"checkpoint: the latest run {checkpoint} (--checkpoint to choose)")
    run = run_of(checkpoint)
    if need_data and (train is None or val is None):
        if run is None:
            raise UserError(f"--checkpoint {checkpoint} is not in a run folder: give --train and --val")
        run_train, run_val = run_sets(run)
        if train is None:
            train = str(run_train)
            notes.append(f"train set: {train}, the run's (--train to choose)")
        if val is None:
            val = str(run_val)
            notes.append(f"val set: {val}, beside the run's train set (--val to choose)")
    return Path(checkpoint), train, val, run, notes
