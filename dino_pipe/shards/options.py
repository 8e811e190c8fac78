"""The options of ``dino-pipe shard``: what decides a shard set's bytes, and the worker default."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dino_pipe.cpus import available_cores
from dino_pipe.errors import UserError
from dino_pipe.shards.image import CHECKS
from dino_pipe.shards.layout import LAYOUTS


def default_workers() -> int:
    return available_cores()


@dataclass(frozen=True)
class ShardOptions:
    """Everything that decides a shard set's bytes (all but ``workers``)."""

    layout: str = "auto"  # auto | imagenet | imagefolder | unlabeled
    seed: int = 0  # shuffle across shards
    shard_samples: int = 1000  # max samples per shard (0 = no limit)
    shard_mb: float = 128.0  # target max MB (1e6 bytes) per shard (0 = no limit)
    quality: int = 95  # JPEG quality of converted images
    max_side: int | None = None  # downscale images whose longer side is larger
    check: str = "structure"  # structure | decode (also decode kept JPEGs at 1/8 scale, catch scans cut short)
    workers: int = 0  # worker processes (0 = all cores); does not change the output

    def validate(self) -> None:
        if self.layout not in LAYOUTS:
            raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got '{self.layout}'")
        if self.shard_samples < 0 or self.shard_mb < 0:
            raise UserError("--shard-samples and --shard-mb must be >= 0 (0 = no limit)")
        if not self.shard_samples and not self.shard_mb:
            raise UserError("--shard-samples and --shard-mb cannot both be 0 (no limit: one giant shard)")
        if not 1 <= self.quality <= 100:
            raise UserError(f"--quality must be in 1..100, got {self.quality}")
        if self.max_side is not None and self.max_side < 16:
            raise UserError(f"--max-side must be >= 16 pixels, got {self.max_side}")
        if self.check not in CHECKS:
            raise UserError(f"--check must be one of {', '.join(CHECKS)}, got '{self.check}'")
        if self.workers < 0:
            raise UserError("--workers must be >= 0 (0 = all cores)")

    def output_options(self) -> dict:
        d = asdict(self)
        d.pop("workers")
        return d

