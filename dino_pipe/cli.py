"""The ``dino-pipe`` command line: parse, load config, call one function of one package, print.

Every command is a thin wrapper: the work is a plain function in its package that returns a result
(a dict or an object with ``to_dict``); this module prints it with rich and writes it as JSON.
User errors (:class:`~dino_pipe.errors.UserError`) become one ``error: ...`` line and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from dino_pipe import __version__, render
from dino_pipe.device import DEVICE_METAVAR, device_choice, resolve_device
from dino_pipe.errors import UserError, os_error_message


class _FlagsWithoutType:
    """Help without a ``<bool>`` type beside plain flags (--help, --quiet, --force, --version, ...): a flag
    takes no value, so there is no type to show."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return params


class _Command(_FlagsWithoutType, TyperCommand):
    """Every dino-pipe command (see :class:`_FlagsWithoutType`)."""


class _Group(_FlagsWithoutType, TyperGroup):
    """dino-pipe and its command groups (see :class:`_FlagsWithoutType`)."""


app = typer.Typer(
    cls=_Group,
    name="dino-pipe",
    help="DINO self-supervised training fed by NVIDIA DALI over validated WebDataset shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
eval_app = typer.Typer(cls=_Group, help="Measure what a run learned: k-NN and linear probes.", no_args_is_help=True)
bench_app = typer.Typer(cls=_Group, help="Throughput benchmarks: the loader and the training step.",
                        no_args_is_help=True)
viz_app = typer.Typer(cls=_Group, help="Pictures: attention maps and training curves.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")
app.add_typer(viz_app, name="viz")
config_app = typer.Typer(cls=_Group, help="Presets: the resolved config a command would use.", no_args_is_help=True)
app.add_typer(config_app, name="config")

def _console(**kwargs: Any) -> Console:
    """A rich Console; when output is not a terminal (piped, redirected) tables get room to stay
    whole instead of rich's 80-column default cutting headers and status text with "…"."""
    c = Console(**kwargs)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c = Console(width=200, **kwargs)
    return c


out = _console()
err = _console(stderr=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"dino-pipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """DINO self-supervised training fed by NVIDIA DALI over validated WebDataset shards."""


def user_errors(fn: Callable) -> Callable:
    """Turn UserError, OSError (disk full, permissions) and Ctrl-C into one line on stderr and an exit code;
    no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _refuse_url_paths(kwargs)
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: finished work is kept; rerun the same command to resume")
            raise typer.Exit(130) from None
        except OSError as e:  # disk full, permission denied, ...: the OS's reason, the path, what to do
            err.print(f"[bold red]error:[/] {os_error_message(e)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _refuse_url_paths(kwargs: dict) -> None:
    """Options that take only local paths (typed ``Path``) refuse ``s3://…`` with one line instead of
    writing a local folder named ``s3:``; options that accept URLs are typed ``str``."""
    from dino_pipe.storage.url import refuse_url

    for name, value in kwargs.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, Path):
                refuse_url(v, name.replace("_", "-"))


def _local_shardset(location: str, quiet: bool = False) -> Path:
    """A shard-set argument as a local folder: ``s3://…`` is fetched into the shard cache first."""
    from dino_pipe.shards.fetch import resolve_shardset

    return resolve_shardset(location, progress=not quiet)


def check_inputs(checkpoint: Optional[Path] = None, shardsets: tuple = (), images: tuple = ()) -> None:
    """The files a command reads, checked before torch and DALI are imported, so a typo is one line at once:
    a checkpoint file or run folder, local shard sets (their manifests), image files."""
    from dino_pipe.data.shardset import open_shardset
    from dino_pipe.runs.run_dir import find_checkpoint

    if checkpoint is not None:
        find_checkpoint(checkpoint)
    for shardset in shardsets:
        if shardset is not None:
            open_shardset(shardset, check=False)
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: image not found")


def write_json(path: Path | None, result: Any) -> None:
    """Write a command's machine-readable result (atomically) when ``path`` is given."""
    if path is None:
        return
    from dino_pipe.atomic import atomic_write_json

    atomic_write_json(path, result.to_dict() if hasattr(result, "to_dict") else result)
    err.print(f"results written to {path}")


def check_outputs(
    files: Optional[dict[str, Optional[Path]]] = None,
    folders: Optional[dict[str, Optional[Path]]] = None,
    *,
    force: bool = False,
    beside: Optional[dict[Path, tuple[str, str]]] = None,
) -> None:
    """Refuse output paths that cannot be written (a folder given for a file, a file for a folder)
    before any work is done, rather than failing after it; and files that already exist unless
    ``--force`` (``beside``: files written next to a named path, ``{file: (option, why)}``)."""
    from dino_pipe.atomic import check_output_file, check_output_folder

    for option, path in (files or {}).items():
        if path is not None:
            check_output_file(path, option, force=force)
    for option, path in (folders or {}).items():
        if path is not None:
            check_output_folder(path, option)
    for path, (option, why) in (beside or {}).items():
        check_output_file(path, option, force=force, why=why)


FORCE_HELP = "Replace output files that already exist (refused otherwise)."


# ----------------------------------------------------------------------------------------------
# shards package: shard, verify
# ----------------------------------------------------------------------------------------------


@app.command("shard")
@user_errors
def shard_cmd(
    src: Path = typer.Argument(
        ..., help="Image tree: SRC/train/<class>/… (+ SRC/val/<class>/…), SRC/<class>/…, or a folder of images."
    ),
    out_dir: Optional[str] = typer.Option(
        None, "--out", "-o", help="Output folder or s3://bucket/prefix (default: shards/<name of SRC>)."
    ),
    layout: str = typer.Option(
        "auto", metavar="[auto|imagenet|imagefolder|unlabeled]", help="Source tree layout (auto: detected)."
    ),
    shard_samples: int = typer.Option(1000, help="Max samples per shard (0 = no limit)."),
    shard_mb: float = typer.Option(128.0, help="Target max shard size in MB (0 = no limit)."),
    seed: int = typer.Option(0, help="Seed of the shuffle across shards."),
    quality: int = typer.Option(95, help="JPEG quality of converted images."),
    max_side: Optional[int] = typer.Option(
        None, help="Downscale (and re-encode) images whose longer side exceeds N pixels."
    ),
    check: str = typer.Option(
        "structure",
        metavar="[structure|decode]",
        help="structure: strict JPEG structure check (fast); "
        "decode: also decode kept JPEGs at 1/8 scale and catch scans cut short (slower).",
    ),
    workers: int = typer.Option(0, help="Worker processes (0 = all cores); the output does not depend on it."),
    force: bool = typer.Option(
        False, "--force",
        help="Replace a different shard set (or foreign tar/idx files) already in OUT, and an existing --json file.",
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Image tree -> validated, deterministic WebDataset shards (+ DALI .idx + manifest.json)."""
    from dino_pipe.shards.options import ShardOptions
    from dino_pipe.shards.writer import shard_tree

    check_outputs({"--json": json_path}, force=force)
    options = ShardOptions(layout=layout, seed=seed, shard_samples=shard_samples, shard_mb=shard_mb, quality=quality,
                           max_side=max_side, check=check, workers=workers)
    result = shard_tree(src, out_dir, options, force=force, progress=not quiet)
    render.shard_summary(out, result)
    write_json(json_path, result)


@app.command("verify")
@user_errors
def verify_cmd(
    shardset: str = typer.Argument(
        ..., help="A shard set folder or s3://bucket/prefix (or a parent holding train/ and val/ sets)."
    ),
    workers: int = typer.Option(0, help="Threads for checksums and DALI decoding (0 = all cores)."),
    device: str = typer.Option("auto", metavar=DEVICE_METAVAR, help="auto: GPU decoding when CUDA is present."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Re-read a shard set: sha256 vs manifest, sample counts, .idx vs tar, every image decoded by DALI."""
    from dino_pipe.shards.verify import verify_shardset
    from dino_pipe.storage.url import is_remote

    check_outputs({"--json": json_path}, force=force)
    if is_remote(shardset):
        from dino_pipe.shards.verify_remote import verify_remote

        result = verify_remote(shardset, workers=workers, device=device, progress=not quiet)
    else:
        result = verify_shardset(shardset, workers=workers, device=device, progress=not quiet)
    render.verify_report(out, err, result)
    write_json(json_path, result)
    if not result["ok"]:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------
# data package: bench loader
# ----------------------------------------------------------------------------------------------


@bench_app.command("loader")
@user_errors
def bench_loader_cmd(
    shardset: str = typer.Argument(
        ..., help="Shard set folder (shard-*.tar, *.idx, manifest.json) or s3://bucket/prefix."
    ),
    device: str = typer.Option(
        "cpu", "--device", metavar=DEVICE_METAVAR, help="cpu: CPU operators; cuda: nvJPEG + GPU operators."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per batch."),
    threads: int = typer.Option(0, "--threads", help="DALI CPU threads (0 = cores / local processes)."),
    n_local: int = typer.Option(10, "--n-local", help="Local crops per image (plus 2 global)."),
    global_size: Optional[int] = typer.Option(None, "--global-size", help="Global crop size (default 224)."),
    local_size: Optional[int] = typer.Option(None, "--local-size", help="Local crop size (default 96)."),
    steps: int = typer.Option(20, "--steps", help="Timed batches."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed batches first."),
    reference: bool = typer.Option(False, "--reference", help="Time the PIL/torchvision reference loader instead."),
    interp: str = typer.Option(
        "gaussian", "--interp", metavar="[gaussian|cubic|linear]", help="DALI crop resize filter (data.interp)."
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Images/s (and views/s) of the DALI multi-crop loader on a shard set."""
    from dino_pipe.config import DataConfig, Interp, check_choice
    from dino_pipe.data.bench import bench_loader
    from dino_pipe.data.loader import default_threads

    device = resolve_device(device)
    check_outputs({"--json": json_path}, force=force)
    threads = threads or default_threads(DataConfig(), 1, device)
    check_choice(interp, Interp, "--interp")
    result = bench_loader(
        _local_shardset(shardset),
        DataConfig(interp=interp),
        device=device,
        batch_size=batch_size,
        threads=threads,
        n_local=n_local,
        steps=steps,
        warmup=warmup,
        loader="reference" if reference else "dali",
        global_size=global_size,
        local_size=local_size,
    )
    render.loader_rate(out, result, batch_size, threads)
    write_json(json_path, result)


# ----------------------------------------------------------------------------------------------
# train package: train, bench train
# ----------------------------------------------------------------------------------------------


@app.command("train")
@user_errors
def train_cmd(
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides: section.key=value ..."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Preset: a YAML file or a name in configs/ (default: vit_small_imagenet)."
    ),
    data: Optional[str] = typer.Option(
        None, "--data", help="Shard set folder or synthetic[:N] (default: the one shard set under ./shards)."
    ),
    output: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run directory; rerunning on it resumes (default: runs/<set>-<preset>)."
    ),
    gpus: Optional[int] = typer.Option(
        None, "--gpus", help="Local GPUs, one DDP process each (0 = CPU; default: all visible)."
    ),
    procs: int = typer.Option(1, "--procs", help="With --gpus 0: number of gloo CPU processes."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (= train.epochs=N)."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Images per step per process (= data.batch_size=N)."
    ),
    extend: bool = typer.Option(
        False,
        "--extend",
        help="Resume a run with a different --epochs (e.g. train a finished run further); "
        "the schedules are recomputed.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train DINO (student + EMA teacher) on a shard set; writes checkpoints, metrics.jsonl, summary.json.

    --data may also be a parent folder holding train/ and val/ shard sets: its train/ set is used.
    """
    from dino_pipe.config import DEFAULT_PRESET, load_config
    from dino_pipe.data.inputs import check_data, local_data
    from dino_pipe.distributed import is_main_process
    from dino_pipe.train.inputs import check_run_dir

    notes = [] if config else [f"config: {DEFAULT_PRESET} (ViT-S/16, the reference DINO run; --config to choose)"]
    config = config or Path(DEFAULT_PRESET)
    cfg = load_config(config, _eval_overrides(overrides, **{"train.epochs": epochs, "data.batch_size": batch_size}))
    data, output = _train_defaults(data, output, config, cfg, extend, notes)
    fetch_progress = not quiet and is_main_process()  # s3://: one progress bar per job
    data = check_data(local_data(data, cfg, progress=fetch_progress))  # paths first: torch and DALI load only after
    check_run_dir(output)
    from dino_pipe.eval.online_knn import training_probe
    from dino_pipe.train.loop import train

    result = train(cfg, data, output, gpus=gpus, procs=procs, progress=not quiet, extend=extend,
                   online_knn=training_probe)
    render.train_summary(out, result)


def _train_defaults(data: Optional[str], output: Optional[Path], config: Path, cfg: Any, extend: bool,
                    notes: list[str]) -> tuple[str, Path]:
    """``--data`` / ``--out`` as given, or the workspace's defaults. When the workspace chose anything, each
    choice (and ``notes``: the default preset) is printed as one line on stderr, once all are made."""
    from dino_pipe import workspace

    if data is not None and output is not None:
        return data, output
    chosen = None
    if data is None:
        chosen = workspace.default_data()
        data = str(chosen.train)
        notes.append(f"data: {data} (the one shard set under ./{workspace.SHARDS}; --data to choose)")
    if output is None:
        pick = workspace.default_run_folder(chosen or data, config, cfg, extend)
        output = pick.path
        notes.append(pick.note)
    from dino_pipe.distributed import is_main_process

    if is_main_process():  # once per job, not per rank
        for note in notes:
            err.print(note, highlight=False, soft_wrap=True)
    return data, output


@config_app.command("show")
@user_errors
def config_show_cmd(
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides: section.key=value ..."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Preset: a YAML file or a name in configs/ (default: vit_small_imagenet)."
    ),
    gpus: Optional[int] = typer.Option(
        None, "--gpus", help="Show data.batch_size as each of N GPUs (one process each) would train with it."
    ),
    procs: int = typer.Option(1, "--procs", help="With --gpus 0: the number of CPU processes."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the resolved config as JSON here."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Print the resolved config (preset + base + overrides) as YAML, as `train` would use it."""
    import yaml

    from dino_pipe.config import DEFAULT_PRESET, load_config, resolve_batch

    check_outputs({"--json": json_path}, force=force)
    cfg = load_config(config or DEFAULT_PRESET, list(overrides or []))
    if gpus is not None:
        if gpus < 0 or procs < 1:
            raise UserError("--gpus must be >= 0 and --procs >= 1")
        cfg = resolve_batch(cfg, gpus or procs)
    typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
    write_json(json_path, cfg)


@bench_app.command("train")
@user_errors
def bench_train_cmd(
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides: section.key=value ..."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Preset YAML; default: ViT-S/16 reference recipe."
    ),
    data: Optional[str] = typer.Option(None, "--data", help="Shard set to read real views from (else synthetic only)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="timm architecture (default: vit_small_patch16_224)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step (default 64)."),
    global_size: Optional[int] = typer.Option(None, "--global-size", help="Global crop size (default 224)."),
    local_size: Optional[int] = typer.Option(None, "--local-size", help="Local crop size (default 96)."),
    n_local: Optional[int] = typer.Option(None, "--n-local", help="Local crops (default 10)."),
    steps: int = typer.Option(30, "--steps", help="Timed steps."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed warm-up steps."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="1 = GPU (default when present), 0 = CPU."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Images/s of the training step (ViT-S/16, 2x224 + 10x96 by default): real shards vs synthetic tensors."""
    from dino_pipe.config import load_config
    from dino_pipe.train.bench import bench_train

    check_outputs({"--json": json_path}, force=force)
    extra = [] if config else ["data.n_local=10"]
    for key, value in (("model.arch", arch), ("data.batch_size", batch_size), ("data.global_size", global_size),
                       ("data.local_size", local_size), ("data.n_local", n_local)):
        if value is not None:
            extra.append(f"{key}={value}")
    cfg = load_config(config, extra + list(overrides or []))
    result = bench_train(cfg, data, steps=steps, warmup=warmup, gpus=gpus)
    render.json_result(out, result)
    write_json(json_path, result)


# ----------------------------------------------------------------------------------------------
# eval package: eval knn, eval linear, viz attention, export
# ----------------------------------------------------------------------------------------------


def _eval_gpus(gpus: Optional[int]) -> int:
    """``--gpus`` default: every visible GPU (0 = CPU when none)."""
    from dino_pipe.distributed import default_gpus

    return default_gpus() if gpus is None else gpus


def _run_inputs(checkpoint: Optional[Path], train: Optional[str] = None, val: Optional[str] = None,
                need_data: bool = False) -> tuple[Path, Optional[str], Optional[str], Optional[Path]]:
    """``--checkpoint`` (and ``--train``/``--val``) as given, or the latest run under ./runs and the sets it
    was trained from (see :mod:`dino_pipe.workspace`); each choice printed on stderr. Returns the run folder too."""
    from dino_pipe.workspace import eval_inputs

    checkpoint, train, val, run, notes = eval_inputs(checkpoint, train, val, need_data)
    for note in notes:
        err.print(note, highlight=False, soft_wrap=True)
    return checkpoint, train, val, run


def _eval_overrides(overrides: Optional[list[str]], **options: Any) -> list[str]:
    """Dotted overrides from the named options that were given, then the positional ones."""
    out = [f"{key}={value}" for key, value in options.items() if value is not None]
    return out + list(overrides or [])


@eval_app.command("knn")
@user_errors
def eval_knn_cmd(
    overrides: Optional[list[str]] = typer.Argument(
        None, help="Config overrides: section.key=value ... (e.g. eval.knn_chunk_size=256)."
    ),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="Checkpoint file, or a run directory (default: the latest run under ./runs)."
    ),
    train: Optional[str] = typer.Option(
        None, "--train", help="Labelled shard set (folder or s3://…): the k-NN bank (default: the run's)."
    ),
    val: Optional[str] = typer.Option(
        None, "--val", help="Labelled shard set (folder or s3://…): the queries (default: val/ beside the run's)."
    ),
    which: str = typer.Option("teacher", "--which", metavar="[teacher|student]", help="teacher: the DINO protocol."),
    random_init: bool = typer.Option(
        False, "--random-init", help="Untrained network of the same architecture (baseline)."
    ),
    k: Optional[list[int]] = typer.Option(None, "--k", help="Neighbours; repeat for several (default 10 20 100 200)."),
    temperature: Optional[float] = typer.Option(
        None, "--temperature", "-T", help="Vote weight exp(sim / T) (default 0.07)."
    ),
    resize: Optional[int] = typer.Option(None, "--resize", help="Shorter side before the center crop (default 256)."),
    crop: Optional[int] = typer.Option(None, "--crop", help="Center crop size (default 224)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per extraction batch per process."),
    save_features: Optional[Path] = typer.Option(
        None, "--save-features", help="Write DIR/train.safetensors and DIR/val.safetensors."
    ),
    load_features: Optional[Path] = typer.Option(
        None, "--load-features", help="Read features saved by --save-features (no network run)."
    ),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs, one process each (0 = CPU; default: all visible)."),
    procs: int = typer.Option(1, "--procs", help="With --gpus 0: number of gloo CPU processes."),
    json_path: Optional[Path] = typer.Option(
        None, "--json", help="Also write the result (accuracies, protocol, sources) as JSON here "
        "(default without --checkpoint: RUN/knn.json)."
    ),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Weighted k-NN top-1/top-5 of frozen features (DINO protocol: teacher, T = 0.07, k = 10/20/100/200)."""
    run_json = False  # RUN/knn.json: the run's own result, replaced by each default evaluation
    if not load_features and (checkpoint is None or train is None or val is None):
        defaulted = checkpoint is None
        checkpoint, train, val, run = _run_inputs(checkpoint, train, val, need_data=True)
        if defaulted and json_path is None and run is not None:
            json_path, run_json = run / "knn.json", True
    train_set, val_set = train and _local_shardset(train), val and _local_shardset(val)
    if load_features is None:
        check_inputs(checkpoint, (train_set, val_set))
    from dino_pipe.eval.knn_eval import evaluate_knn, feature_file

    saved = {feature_file(save_features, split): ("--save-features", f"written into {save_features}")
             for split in ("train", "val")} if save_features else {}
    check_outputs({"--json": None if run_json else json_path}, {"--save-features": save_features}, force=force,
                  beside=saved)
    result = evaluate_knn(
        checkpoint,
        train_set,
        val_set,
        which=which,
        random_init=random_init,
        ks=tuple(k) if k else None,
        temperature=temperature,
        save_features=save_features,
        load_features=load_features,
        overrides=_eval_overrides(
            overrides, **{"data.eval_resize": resize, "data.eval_crop": crop, "eval.batch_size": batch_size}
        ),
        gpus=_eval_gpus(gpus),
        procs=procs,
    )
    render.knn_report(out, result, _knn_baseline(result))
    write_json(json_path, result)


def _knn_baseline(result: dict) -> Optional[dict]:
    """The untrained network's k-NN for this result, from its run's step-0 online k-NN
    (:func:`~dino_pipe.eval.baseline.run_baseline`); stored in the result as ``baseline`` when there is one."""
    from dino_pipe.eval.baseline import run_baseline

    baseline = run_baseline(result)
    if baseline is not None:  # None for --random-init, or when the run measured something else
        result["baseline"] = baseline
    return baseline


@eval_app.command("linear")
@user_errors
def eval_linear_cmd(
    overrides: Optional[list[str]] = typer.Argument(
        None, help="Config overrides: section.key=value ... (e.g. eval.linear_n_last_blocks=1)."
    ),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="Checkpoint file, or a run directory (default: the latest run under ./runs)."
    ),
    train: Optional[str] = typer.Option(
        None, "--train", help="Labelled shard set (folder or s3://…) for the classifier (default: the run's)."
    ),
    val: Optional[str] = typer.Option(
        None, "--val", help="Labelled shard set (folder or s3://…) to report on (default: val/ beside the run's)."
    ),
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output folder: linear.json + linear_state.pt, rerun to resume (default: the run)."
    ),
    which: str = typer.Option("teacher", "--which", metavar="[teacher|student]", help="Which weights."),
    random_init: bool = typer.Option(
        False, "--random-init", help="Untrained network of the same architecture (baseline)."
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default 100)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate for a global batch of 256 (default 1e-3)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step per process (default 128)."),
    n_last_blocks: Optional[int] = typer.Option(
        None, "--n-last-blocks", help="ViT: concatenate the CLS tokens of the last n blocks (default 4)."
    ),
    avgpool: Optional[bool] = typer.Option(
        None, "--avgpool/--no-avgpool", help="ViT: add the mean patch token (DINO's ViT-B setting)."
    ),
    resize: Optional[int] = typer.Option(
        None, "--resize", help="Val: shorter side before the center crop (default 256)."
    ),
    crop: Optional[int] = typer.Option(None, "--crop", help="Crop size, train and val (default 224)."),
    gpus: Optional[int] = typer.Option(
        None, "--gpus", help="GPUs, one DDP process each (0 = CPU; default: all visible)."
    ),
    procs: int = typer.Option(1, "--procs", help="With --gpus 0: number of gloo CPU processes."),
) -> None:
    """Linear probe on frozen features (SGD, cosine lr, random-resized-crop + flip); resumable."""
    checkpoint, train, val, run = _run_inputs(checkpoint, train, val, need_data=True)
    if out_dir is None:
        if run is None:
            raise UserError(f"--checkpoint {checkpoint} is not in a run folder: give --out")
        out_dir = run
        err.print(f"output: {out_dir}/linear.json (the run; --out to choose)", highlight=False)
    check_outputs(folders={"--out": out_dir})
    train_set, val_set = _local_shardset(train), _local_shardset(val)
    check_inputs(checkpoint, (train_set, val_set))
    from dino_pipe.eval.linear import evaluate_linear

    opts = {"eval.linear_epochs": epochs, "eval.linear_lr": lr, "eval.batch_size": batch_size,
            "eval.linear_n_last_blocks": n_last_blocks,
            "eval.linear_avgpool_patchtokens": None if avgpool is None else str(avgpool).lower(),
            "data.eval_resize": resize, "data.eval_crop": crop}
    result = evaluate_linear(
        checkpoint,
        train_set,
        val_set,
        out_dir,
        which=which,
        random_init=random_init,
        overrides=_eval_overrides(overrides, **opts),
        gpus=_eval_gpus(gpus),
        procs=procs,
    )
    render.linear_report(out, result)
    err.print(f"results written to {Path(result['output_dir']) / 'linear.json'}")


@viz_app.command("attention")
@user_errors
def viz_attention_cmd(
    images: list[Path] = typer.Argument(..., help="Image files (any size: cropped to a multiple of the patch)."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="Checkpoint file, or a run directory (default: the latest run under ./runs)."
    ),
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Folder for <image>-attention.png and attention.json (default: RUN/attention)."
    ),
    which: str = typer.Option("teacher", "--which", metavar="[teacher|student]", help="Which weights."),
    random_init: bool = typer.Option(
        False, "--random-init", help="Untrained network of the same architecture (baseline)."
    ),
    size: Optional[int] = typer.Option(
        None,
        "--size",
        help="Resize the shorter side to this first (default: the size the run trained at, data.global_size, "
        "unless that gives fewer than 14 patches a side: then 224; 0 = keep the image size).",
    ),
    threshold: Optional[float] = typer.Option(
        0.6, "--threshold", help="Also show the patches holding this share of attention (0 = off)."
    ),
    device: str = typer.Option("auto", "--device", metavar=DEVICE_METAVAR, help="auto: cuda when present."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Last-layer CLS self-attention of every head (and their mean) over each image, as PNG grids."""
    device_choice(device)  # the name now; CUDA is looked for once the inputs are checked
    checkpoint, _, _, run = _run_inputs(checkpoint)
    in_run = out_dir is None  # RUN/attention: the run's own pictures, redrawn freely
    if in_run:
        if run is None:
            raise UserError(f"--checkpoint {checkpoint} is not in a run folder: give --out")
        out_dir = run / "attention"
        err.print(f"output: {out_dir} (in the run; --out to choose)", highlight=False)
    check_inputs(checkpoint, images=tuple(images))
    from dino_pipe.eval.inputs import attention_outputs

    check_outputs(folders={"--out": out_dir}, force=force or in_run,
                  beside={f: ("--out", f"written into {out_dir}") for f in attention_outputs(images, out_dir)})
    from dino_pipe.eval.attention import render_attention
    result = render_attention(checkpoint, [str(p) for p in images], out_dir, which=which, random_init=random_init,
                              size=size, threshold=threshold or None, device=resolve_device(device))
    render.attention_report(out, result, size, threshold)
    err.print(f"results written to {Path(out_dir) / 'attention.json'}")


@app.command("export")
@user_errors
def export_cmd(
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="Checkpoint file, or a run directory (default: the latest run under ./runs)."
    ),
    out_file: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output FILE.safetensors + FILE.json sidecar (default: RUN/backbone.safetensors)."
    ),
    which: str = typer.Option("teacher", "--which", metavar="[teacher|student]", help="Which weights."),
    force: bool = typer.Option(False, "--force", help="Replace FILE.safetensors and FILE.json if they exist."),
) -> None:
    """The backbone as a timm state dict in safetensors, loadable with timm.create_model(pretrained=True, ...)."""
    check_inputs(checkpoint)
    from dino_pipe.eval.export import export_backbone, sidecar_path

    checkpoint, _, _, run = _run_inputs(checkpoint)
    in_run = out_file is None  # RUN/backbone.safetensors: the run's own export, replaced by the next one
    if in_run:
        if run is None:
            raise UserError(f"--checkpoint {checkpoint} is not in a run folder: give --out")
        out_file = run / "backbone.safetensors"
        err.print(f"output: {out_file} (in the run; --out to choose)", highlight=False)
    info = export_backbone(checkpoint, out_file, which=which, force=force or in_run)
    render.export_summary(out, info, which, sidecar_path(out_file))


@viz_app.command("curves")
@user_errors
def viz_curves_cmd(
    run_dir: Optional[Path] = typer.Argument(
        None, help="A dino-pipe train run directory, reads its metrics.jsonl (default: the latest run under ./runs)."
    ),
    knn: Optional[list[Path]] = typer.Option(None, "--knn", help="k-NN result JSON files (eval knn --json); repeat."),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default RUN_DIR/curves.png)."),
    k: int = typer.Option(20, "--k", help="Which k of the k-NN results to draw."),
    force: bool = typer.Option(False, "--force", help="Replace the PNG and its .json if they exist."),
) -> None:
    """The loss and teacher entropy per step and k-NN top-1 per checkpoint, as one PNG."""
    from dino_pipe.eval.curves import plot_curves

    if run_dir is None:
        run_dir = _run_inputs(None)[0]
    if not knn and (Path(run_dir) / "knn.json").is_file():
        knn = [Path(run_dir) / "knn.json"]
        err.print(f"k-NN points: {knn[0]} (--knn to choose)", highlight=False)
    png = out_file or Path(run_dir) / "curves.png"
    mine = force or out_file is None  # the default RUN_DIR/curves.png is the run's own, redrawn freely
    check_outputs({"--out": png}, force=mine, beside={png.with_suffix(".json"): ("--out", f"written beside {png}")})
    result = plot_curves(run_dir, png, knn or [], k=k)
    render.curves_summary(out, result)
    write_json(png.with_suffix(".json"), result)


def _use_command_class() -> None:
    """Every registered command is built as :class:`_Command` (unless it names its own class)."""
    for group in (app, eval_app, bench_app, viz_app, config_app):
        for info in group.registered_commands:
            if info.cls in (None, TyperCommand):  # typer's default
                info.cls = _Command


_use_command_class()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
