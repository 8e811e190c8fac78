"""One meaning per flag across every command: the same option name (or short flag) never means two things."""

from __future__ import annotations

import typer

from dino_pipe.cli import app

# Every option of every command, with its one meaning. A new option is added here once; reusing a name
# for something else (``--output`` as a JSON file in one command and a folder in another) fails below.
MEANINGS = {
    "--json": "write the command's machine-readable result to this JSON file",
    "--out": "what the command makes: a shard set, a run folder, PNGs, a model file",
    "--config": "preset YAML (configs/*.yaml)",
    "--checkpoint": "checkpoint file, or a run folder (its newest checkpoint)",
    "--data": "shard set to train on",
    "--train": "labelled shard set the evaluation trains on (k-NN bank, linear probe)",
    "--val": "labelled shard set the evaluation reports on",
    "--which": "teacher or student weights",
    "--random-init": "an untrained network of the same architecture",
    "--gpus": "local GPUs, one process each (0 = CPU)",
    "--procs": "with --gpus 0: number of CPU processes",
    "--device": "where the work runs (cpu, gpu/cuda, auto)",
    "--workers": "worker processes or threads (0 = all cores)",
    "--threads": "DALI CPU threads",
    "--quiet": "no progress bar",
    "--force": "replace what is in the way",
    "--extend": "resume with a different number of epochs",
    "--epochs": "training epochs",
    "--batch-size": "images per step per process",
    "--lr": "learning rate",
    "--steps": "timed steps / batches",
    "--warmup": "untimed steps / batches first",
    "--arch": "timm architecture",
    "--global-size": "global crop size",
    "--local-size": "local crop size",
    "--n-local": "local crops per image",
    "--interp": "DALI crop resize filter",
    "--reference": "time the reference loader instead",
    "--resize": "shorter side before the center crop",
    "--crop": "center crop size",
    "--size": "resize the shorter side first",
    "--k": "k-NN neighbours",
    "--knn": "k-NN result JSON files to read",
    "--temperature": "k-NN vote temperature",
    "--save-features": "folder to write features to",
    "--load-features": "folder to read features from",
    "--n-last-blocks": "ViT CLS tokens of the last n blocks",
    "--avgpool": "ViT: add the mean patch token",
    "--no-avgpool": "ViT: no mean patch token",
    "--threshold": "attention share to outline",
    "--layout": "source tree layout",
    "--seed": "seed",
    "--shard-samples": "max samples per shard",
    "--shard-mb": "target max shard size",
    "--quality": "JPEG quality",
    "--max-side": "downscale larger images",
    "--check": "how strictly images are checked",
    "--version": "print the version",
    "--help": "show help",
}
SHORT = {"-c": "--config", "-o": "--out", "-q": "--quiet", "-T": "--temperature"}


def _commands(cmd, path=()):
    if hasattr(cmd, "commands"):
        yield " ".join(path), cmd
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), cmd


def _options():
    """(command, long names, short names, help) of every option of every command and group."""
    for path, cmd in _commands(typer.main.get_command(app)):
        for p in cmd.params:
            if p.param_type_name == "option":
                names = [*p.opts, *p.secondary_opts]
                yield (path, [n for n in names if n.startswith("--")], [n for n in names if not n.startswith("--")],
                       p.help or "")


def test_every_option_has_one_declared_meaning():
    unknown = sorted({f"{path}: {n}" for path, longs, _, _ in _options() for n in longs if n not in MEANINGS})
    assert not unknown, f"options without a declared meaning (add them to MEANINGS once): {unknown}"


def test_a_short_flag_always_stands_for_the_same_option():
    seen: dict[str, set[str]] = {}
    for path, longs, shorts, _ in _options():
        for s in shorts:
            seen.setdefault(s, set()).update(longs)
            assert s in SHORT and longs == [SHORT[s]], f"{path}: {s} stands for {longs}, elsewhere for {SHORT.get(s)}"
    assert all(len(v) == 1 for v in seen.values()), seen


def test_json_results_are_always_json_and_artefacts_always_out():
    opts = list(_options())
    for path, longs, shorts, help_ in opts:
        if "--json" in longs:
            assert "JSON" in help_ and not shorts, (path, help_)
        elif "as JSON" in help_:
            raise AssertionError(f"{path} {longs}: writes a JSON result, so it should be --json")
        if "--out" in longs:
            assert shorts == ["-o"], (path, shorts)
    commands = {path for path, *_ in opts}
    assert {p for p, longs, *_ in opts if "--json" in longs} >= {"shard", "verify", "eval knn", "bench loader"}
    assert {p for p, longs, *_ in opts if "--out" in longs} >= {"shard", "train", "eval linear", "export"}
    assert "train" in commands and "eval knn" in commands


def test_choice_options_list_the_choices_they_accept():
    """``--help`` lists the choices; they are the same tuples the commands check against."""
    from dino_pipe.config import Interp, choices
    from dino_pipe.eval.inputs import WHICH
    from dino_pipe.shards.image import CHECKS
    from dino_pipe.shards.layout import LAYOUTS

    expected = {
        ("shard", "--layout"): LAYOUTS,
        ("shard", "--check"): CHECKS,
        ("bench loader", "--interp"): choices(Interp),
        ("eval knn", "--which"): WHICH,
        ("eval linear", "--which"): WHICH,
        ("export", "--which"): WHICH,
        ("viz attention", "--which"): WHICH,
    }
    metavars = {}
    for path, cmd in _commands(typer.main.get_command(app)):
        for p in cmd.params:
            if p.param_type_name == "option":
                metavars[(path, p.opts[0])] = p.metavar
    for key, values in expected.items():
        assert metavars[key] == "[" + "|".join(values) + "]", (key, metavars[key])


def test_plain_flags_show_no_type_in_any_help():
    """``--help`` shows ``<bool>`` beside no flag (--extend, --quiet, --version, --help, ...): a flag takes no value."""
    from typer.testing import CliRunner

    runner = CliRunner()
    paths = [path for path, _ in _commands(typer.main.get_command(app))]
    assert len(paths) > 10
    for path in paths:
        res = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "200"}, terminal_width=200)
        assert res.exit_code == 0, (path, res.output)
        assert "--help" in res.output and "<bool>" not in res.output, (path, res.output)
