"""Training: the loop, EMA teacher, schedules, optimizer, checkpoints, metrics, the launcher, diagnostics.

``train(cfg, data, output, gpus=...)`` is the entry point the CLI calls. Importing this package imports
nothing heavy: ``find_checkpoint``, ``load_checkpoint`` and ``save_checkpoint`` (which need torch) load
:mod:`dino_pipe.train.checkpoint` on first use, so torch-free modules such as
:mod:`dino_pipe.train.inputs` can be imported before the arguments are checked.
"""

from typing import Any

_CHECKPOINT_NAMES = ("find_checkpoint", "load_checkpoint", "save_checkpoint")


def train(*args, **kwargs):
    """See :func:`dino_pipe.train.loop.train` (imported lazily)."""
    from dino_pipe.train.loop import train as _train

    return _train(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _CHECKPOINT_NAMES:
        from dino_pipe.train import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'dino_pipe.train' has no attribute {name!r}")


__all__ = ["train", "find_checkpoint", "load_checkpoint", "save_checkpoint"]
