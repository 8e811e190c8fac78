"""Training: the loop, EMA teacher, schedules, optimizer, checkpoints, metrics, the launcher, diagnostics.

``train(cfg, data, output, gpus=...)`` is the entry point the CLI calls.
"""

from dino_pipe.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint


def train(*args, **kwargs):
    """See :func:`dino_pipe.train.loop.train` (imported lazily)."""
    from dino_pipe.train.loop import train as _train

    return _train(*args, **kwargs)


__all__ = ["train", "find_checkpoint", "load_checkpoint", "save_checkpoint"]
