"""The ``dino-pipe`` command line: parse, load config, call one function of one room, print.

Every command is a thin wrapper: the work is a plain function in its room that returns a result
(a dict or an object with ``to_dict``); this module prints it with rich and writes it as JSON.
User errors (:class:`~dino_pipe.errors.UserError`) become one ``error: ...`` line and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from dino_pipe import __version__
from dino_pipe.errors import UserError

app = typer.Typer(
    name="dino-pipe",
    help="DINO self-supervised training fed by NVIDIA DALI over validated WebDataset shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
eval_app = typer.Typer(help="Measure what a run learned: k-NN and linear probes.", no_args_is_help=True)
bench_app = typer.Typer(help="Throughput benchmarks: the loader and the training step.", no_args_is_help=True)
viz_app = typer.Typer(help="Pictures: attention maps.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")
app.add_typer(viz_app, name="viz")

out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"dino-pipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """DINO self-supervised training fed by NVIDIA DALI over validated WebDataset shards."""


def user_errors(fn: Callable) -> Callable:
    """Turn UserError (and Ctrl-C) into one line on stderr and an exit code; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: finished work is kept; rerun the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


def write_json(path: Path | None, result: Any) -> None:
    """Write a command's machine-readable result (atomically) when ``path`` is given."""
    if path is None:
        return
    from dino_pipe.atomic import atomic_write_json

    atomic_write_json(path, result.to_dict() if hasattr(result, "to_dict") else result)
    err.print(f"results written to {path}")


def print_json(result: Any) -> None:
    out.print_json(json.dumps(result.to_dict() if hasattr(result, "to_dict") else result))


# ----------------------------------------------------------------------------------------------
# shards room: shard, verify
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# data room: bench loader
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# train room: train, bench train
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# eval room: eval knn, eval linear, viz attention, export
# ----------------------------------------------------------------------------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
