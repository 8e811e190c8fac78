"""What ``--data`` names, checked before anything heavy is imported (no torch, no DALI), and the loader
over it: a shard set, a parent of shard sets (its ``train/``), an ``s3://`` set (fetched into the shard
cache first) or ``synthetic[:N]``.

Training and ``bench train`` both read their data through these; the CLI calls the checks first, so a
mistyped path is one line within a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

from dino_pipe.config import Config
from dino_pipe.errors import UserError


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
            from dino_pipe.progress import say_once

            say_once(f"--data {p}: a parent of shard sets ({', '.join(sets)}); training on {p / 'train'}")
            return p / "train"
        if sets:
            raise UserError(f"--data {p}: not a shard set itself; it holds the shard sets {', '.join(sets)}: "
                            f"give one of them, e.g. --data {p / sets[0]}")
        raise UserError(f"--data {p}: not a shard set (no manifest.json; make one with `dino-pipe shard`)")
    return data


def data_identity(data: str | Path) -> str:
    """What ``data`` holds (judged by content, not path; see :func:`content_identity`): a run resumes only on it."""
    if parse_synthetic(data) is not None:
        return str(data)
    from dino_pipe.data.shardset import content_identity

    return content_identity(data)


def make_loader(data: str | Path, cfg: Config, env, **kwargs):
    """The DALI :class:`ViewLoader` over a shard set (a :class:`StreamViewLoader` when it is streamed), or the
    synthetic loader for ``synthetic[:N]``, as the rank ``env`` (a :class:`~dino_pipe.distributed.DistEnv`) reads it."""
    n = parse_synthetic(data)
    if n is not None:
        from dino_pipe.data.synthetic import SyntheticViewLoader

        return SyntheticViewLoader(cfg.data, num_samples=n, device=env.device, device_id=env.local_rank,
                                   rank=env.rank, world_size=env.world_size, **kwargs)
    if streams(data, cfg):
        from dino_pipe.data.stream_loader import StreamViewLoader

        return StreamViewLoader(str(data), cfg.data, device=env.device, device_id=env.local_rank, rank=env.rank,
                                world_size=env.world_size, **kwargs)
    from dino_pipe.data.loader import ViewLoader

    return ViewLoader(Path(data), cfg.data, device=env.device, device_id=env.local_rank, rank=env.rank,
                      world_size=env.world_size, **kwargs)
