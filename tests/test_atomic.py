"""Atomic writes: all-or-nothing, normal file mode, torn JSONL lines skipped."""

import os
import stat

import pytest

from dino_pipe.atomic import append_jsonl, atomic_open, atomic_write_json, read_jsonl


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as f:
            f.write("partial")
            raise RuntimeError("killed mid-write")
    assert p.read_text().strip().endswith("}") and '"v": 1' in p.read_text()
    assert [x.name for x in tmp_path.iterdir()] == ["a.json"]


def test_written_file_gets_umask_mode_not_0600(tmp_path):
    p = tmp_path / "b.bin"
    with atomic_open(p) as f:
        f.write(b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


def test_torn_jsonl_line_is_skipped(tmp_path):
    p = tmp_path / "m.jsonl"
    append_jsonl(p, {"step": 1})
    append_jsonl(p, {"step": 2})
    with open(p, "a") as f:
        f.write('{"step": 3, "lo')
    assert read_jsonl(p) == [{"step": 1}, {"step": 2}]
