"""DALI's WebDataset index (``.idx``): random access into a tar for ``fn.readers.webdataset``.

The format ``wds2idx`` writes (version ``v1.2``)::

    v1.2 <number of samples>
    <ext> <data offset> <size> <member name> [<ext> <data offset> <size> <member name> ...]
    ...

one line per sample (consecutive members sharing a key), offsets pointing at member data (header
offset + 512). We write it from the offsets the tar writer already knows, so no second pass over
the tar and no subprocess; ``tests/test_shards_format.py`` checks it equals ``wds2idx``'s output.
"""

from __future__ import annotations

from typing import Iterable

from dino_pipe.shards.tar import TarMember, split_name

INDEX_VERSION = "v1.2"

IndexEntry = tuple[str, int, int, str]  # (extension, data offset, size, member name)


def group_samples(members: Iterable[TarMember]) -> list[list[IndexEntry]]:
    """Group consecutive members by sample key, skipping hidden files (empty base names)."""
    samples: list[list[IndexEntry]] = []
    last_key = None
    for m in members:
        key, ext = split_name(m.name)
        if not key or key.endswith("/"):
            continue
        entry = (ext, m.offset, m.size, m.name)
        if key != last_key:
            samples.append([entry])
            last_key = key
        else:
            samples[-1].append(entry)
    return samples


def format_index(samples: list[list[IndexEntry]]) -> str:
    """The ``.idx`` text for grouped samples (see the module docstring)."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for sample in samples:
        lines.append(" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in sample))
    return "\n".join(lines) + "\n"


class IndexFormatError(Exception):
    """The index file cannot be parsed (message says where)."""


def parse_index(text: str) -> list[list[IndexEntry]]:
    """Parse a ``v1.2`` index back into grouped entries."""
    lines = text.splitlines()
    if not lines:
        raise IndexFormatError("empty index file")
    head = lines[0].split()
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise IndexFormatError(f"first line '{lines[0][:40]}' is not '{INDEX_VERSION} <count>'")
    samples = []
    for i, line in enumerate(lines[1:], start=2):
        fields = line.split(" ")
        if len(fields) % 4 or not fields:
            raise IndexFormatError(f"line {i} does not hold groups of 'ext offset size name'")
        try:
            samples.append(
                [(fields[j], int(fields[j + 1]), int(fields[j + 2]), fields[j + 3]) for j in range(0, len(fields), 4)]
            )
        except ValueError:
            raise IndexFormatError(f"line {i} has a non-integer offset or size") from None
    if len(samples) != int(head[1]):
        raise IndexFormatError(f"header says {head[1]} samples, file lists {len(samples)}")
    return samples
