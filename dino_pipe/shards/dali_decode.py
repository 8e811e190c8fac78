"""Decode shard images with DALI in a child process, so a crashing decoder cannot take us down.

A corrupt image is a fatal DALI pipeline error, and now and then (DALI 2.4, CPU decoder) the
error path itself segfaults the process. :func:`run_decode_tasks` therefore runs the pipelines in
``python -m dino_pipe.shards.dali_decode``, which reads a JSON job on stdin and reports one line
per event on stdout::

    begin <task>        about to run task <task>
    adv <n>             n more images decoded (for the progress bar)
    ok <task>           the task's images all decoded
    fail <task> <why>   DALI raised; <why> is the decoder's message (the child then exits)

A task is either ``{"kind": "shards", "paths", "index_paths", "exts"}`` (every image of those
tars through ``fn.readers.webdataset`` + ``fn.decoders.image``) or ``{"kind": "image", "path",
"offset", "size"}`` (one tar member through ``fn.external_source``). When the child dies inside
a task, that task is reported as crashed; after a failure or a crash a fresh child resumes with
the next task (a failed pipeline can leave DALI unstable, so no child goes on after one).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from typing import Callable

from dino_pipe.errors import UserError

BATCH = 32


def dali_reason(e: Exception) -> str:
    """The line after ``encountered:`` in a DALI pipeline error (the decoder's own words)."""
    text = str(e)
    tail = text.split("encountered:", 1)[1] if "encountered:" in text else text
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip() and "no longer valid" not in ln]
    return (lines[0] if lines else "decoder error")[:200]


def run_decode_tasks(
    tasks: list[dict], device: str, threads: int, on_advance: Callable[[int], None] = lambda n: None
) -> list[str | None]:
    """Run ``tasks`` in child processes; per task ``None`` (decoded) or the reason it failed."""
    results: list[str | None] = [None] * len(tasks)
    start = 0
    while start < len(tasks):
        job = {"device": device, "threads": threads, "first": start, "tasks": tasks[start:]}
        with tempfile.TemporaryFile(mode="w+") as errlog:
            proc = subprocess.Popen([sys.executable, "-m", "dino_pipe.shards.dali_decode"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=errlog, text=True)
            try:
                proc.stdin.write(json.dumps(job))
                proc.stdin.close()
                current, finished = None, start
                for line in proc.stdout:
                    word, _, rest = line.rstrip("\n").partition(" ")
                    if word == "adv":
                        on_advance(int(rest))
                    elif word == "begin":
                        current = int(rest)
                    elif word in ("ok", "fail"):
                        i, _, why = rest.partition(" ")
                        results[int(i)] = (why or "decoder error") if word == "fail" else None
                        current, finished = None, int(i) + 1
                code = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if current is None and finished >= len(tasks):
                return results
            if current is None:  # died between tasks (or before the first one)
                if finished == start:
                    errlog.seek(0)
                    tail = [ln for ln in errlog.read().splitlines() if ln.strip()][-1:] or [f"exit code {code}"]
                    raise UserError(f"cannot run DALI to decode images: {tail[0][:200]}")
                start = finished
                continue
            name = (
                signal.Signals(-code).name
                if code < 0 and -code in signal.Signals._value2member_map_
                else f"exit code {code}"
            )
            results[current] = f"DALI crashed ({name}) while decoding"
            start = current + 1
    return results


# ---------------------------------------------------------------- the child


def reader_pipeline(task: dict, device: str, threads: int, *, device_id: int | None = None):
    """The (unbuilt) pipeline decoding every image of a ``shards`` task; outputs each image's shape.

    ``device_id=None`` keeps DALI away from CUDA: a ``"mixed"`` graph can then be defined and
    serialized (DALI checks it against the operator schemas) but not built, as the tests do
    on a machine without a GPU.
    """
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=BATCH, num_threads=threads, device_id=device_id, prefetch_queue_depth=1)
    def pipe():
        images = fn.readers.webdataset(paths=task["paths"], index_paths=task["index_paths"], ext=[task["exts"]],
                                       name="reader", missing_component_behavior="skip", pad_last_batch=True)
        return fn.decoders.image(images, device=device, output_type=types.RGB).shape()

    return pipe()


def image_pipeline(device: str, *, device_id: int | None = None):
    """The (unbuilt) one-image pipeline fed through ``external_source``; outputs the image's shape.

    Uses DALI's default (dynamic) executor: reading ``.shape()`` of the mixed decoder's GPU output
    is a GPU->CPU transition, which DALI 2.4 refuses under ``exec_async=False``/``exec_pipelined=False``.
    """
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=device_id, prefetch_queue_depth=1)
    def pipe():
        data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(data, device=device, output_type=types.RGB).shape()

    return pipe()


def _built(pipe):
    pipe.build()
    return pipe


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _child() -> None:
    import numpy as np

    job = json.loads(sys.stdin.read())
    device, threads = job["device"], job["threads"]
    single = None
    for i, task in enumerate(job["tasks"], start=job["first"]):
        _say(f"begin {i}")
        try:
            if task["kind"] == "shards":
                pipe = _built(reader_pipeline(task, device, threads, device_id=0 if device == "mixed" else None))
                total, done = pipe.epoch_size("reader"), 0
                while done < total:
                    pipe.run()
                    n = min(BATCH, total - done)
                    done += n
                    _say(f"adv {n}")
                del pipe
            else:
                with open(task["path"], "rb") as f:
                    f.seek(task["offset"])
                    data = np.frombuffer(f.read(task["size"]), dtype=np.uint8)
                single = single or _built(image_pipeline(device, device_id=0 if device == "mixed" else None))
                single.feed_input("data", [data])
                single.run()
            _say(f"ok {i}")
        except RuntimeError as e:
            _say(f"fail {i} {dali_reason(e)}")
            return  # DALI may be left unstable after an error: the parent starts a fresh child


if __name__ == "__main__":
    _child()
