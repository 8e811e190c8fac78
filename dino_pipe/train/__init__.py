"""Training: the loop, EMA teacher, schedules, optimizer, checkpoints, metrics, diagnostics.

``train(cfg, data, output, gpus=...)`` is the entry point the CLI calls. Importing this package imports
nothing heavy, so torch-free modules such as :mod:`dino_pipe.train.inputs` can be imported before the
arguments are checked. ``find_checkpoint``, ``load_checkpoint`` and ``save_checkpoint`` are the run
files' (:mod:`dino_pipe.runs`), named here for callers of the training API.
"""

from typing import Any

_CHECKPOINT_NAMES = ("find_checkpoint", "load_checkpoint", "save_checkpoint")


def train(*args, **kwargs):
    """See :func:`dino_pipe.train.loop.train` (imported lazily)."""
    from dino_pipe.train.loop import train as _train

    return _train(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _CHECKPOINT_NAMES:
        from dino_pipe.runs import checkpoint_file, run_dir

        return getattr(run_dir if name == "find_checkpoint" else checkpoint_file, name)
    raise AttributeError(f"module 'dino_pipe.train' has no attribute {name!r}")


__all__ = ["train", "find_checkpoint", "load_checkpoint", "save_checkpoint"]
