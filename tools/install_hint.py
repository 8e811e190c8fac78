"""What a ``tools/`` script says when dino-pipe (or a package it needs) is not installed in this Python.

Each script calls :func:`require` before its own imports and runs ``main()`` inside
:func:`needs_install`, so a missing install ends in one line that says what to run, never in a
``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path


def _hint(module: str, extras: str) -> str:
    script = f"tools/{Path(sys.argv[0]).name}"
    setup = f"tools/setup.sh {extras}".rstrip()
    return (f"error: {script}: Python module '{module}' is not installed for {sys.executable}; "
            f"run `{setup}` once, then `source .venv/bin/activate` (or run the script with .venv/bin/python)")


def require(*modules: str, extras: str = "") -> None:
    """Exit with one line (status 2) unless ``dino_pipe`` and ``modules`` can be imported."""
    for name in ("dino_pipe", "torch", *modules):
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a dotted name whose parent package is missing
            found = False
        if not found:
            print(_hint(name, extras), file=sys.stderr)
            raise SystemExit(2)


@contextlib.contextmanager
def needs_install(extras: str = ""):
    """Turn a ``ModuleNotFoundError`` raised inside into the same one line (status 2)."""
    try:
        yield
    except ModuleNotFoundError as e:
        print(_hint(e.name or str(e), extras), file=sys.stderr)
        raise SystemExit(2) from None
