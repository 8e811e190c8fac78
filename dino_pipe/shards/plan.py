"""Which sample goes into which shard: a seeded shuffle, then greedy filling up to the limits.

The plan depends only on the sorted source listing (paths and file sizes) and the options, never
on how many workers run or on what happened in an earlier, interrupted run. That is what makes
the output byte-identical across reruns, worker counts and resumes: each shard is a fixed list of
source files, written independently of every other shard.

Shard byte sizes are planned from source file sizes plus the tar overhead per sample, so they
hit the target exactly for JPEGs stored as-is and approximately for converted images.
"""

from __future__ import annotations

import random

# Tar bytes per sample besides the image data: two 512-byte headers, a 512-byte .cls block,
# and on average half a block of padding.
SAMPLE_OVERHEAD = 1792


def shuffled_order(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` determined by ``seed`` (Python's Mersenne Twister)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def plan_shards(sizes: list[int], seed: int, max_samples: int, max_bytes: int) -> list[list[int]]:
    """Shuffle sample indices with ``seed`` and cut them into shards.

    A shard closes when it holds ``max_samples`` samples or when the next sample would push its
    planned size past ``max_bytes`` (a limit of 0 disables it; a shard always takes at least one
    sample). Returns the list of source indices of each shard, in shard order.
    """
    shards: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for i in shuffled_order(len(sizes), seed):
        est = sizes[i] + SAMPLE_OVERHEAD
        full = (max_samples and len(current) >= max_samples) or (
            max_bytes and current and current_bytes + est > max_bytes
        )
        if full:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += est
    if current:
        shards.append(current)
    return shards
