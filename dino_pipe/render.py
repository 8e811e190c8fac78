"""How each command's result reads on a terminal: its tables and summary lines, printed with rich.

The commands in :mod:`dino_pipe.cli` parse, call one function, and hand its result (a plain dict) to one
function here with the console to print on. Shared pieces: :func:`title` (a table's title line),
:func:`table` (columns and rows), :func:`results_line` (``label: key value, key value``), :func:`json_result`
and the class labels of per-class lines (:func:`class_label`). Only rich is imported here, so the CLI
loads this module before it checks its inputs (no torch, no DALI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from rich.console import Console
from rich.table import Table

# ----------------------------------------------------------------------------------------------
# shared pieces
# ----------------------------------------------------------------------------------------------


def title(out: Console, text: str) -> None:
    """A table's title on its own line: as a rich table title it would wrap to the table's width (a 27-character
    column for the k-NN table)."""
    out.print(text, style="bold", highlight=False, soft_wrap=True)


def table(columns: Sequence[str], rows: Iterable[Sequence[str]], *, left: Sequence[str] = (),
          no_wrap: Sequence[str] = (), simple: bool = False) -> Table:
    """A table of ``columns`` (right-aligned numbers unless named in ``left``) filled with ``rows`` of text;
    ``simple``: a header rule only (rich's SIMPLE_HEAD box)."""
    from rich import box

    t = Table(box=box.SIMPLE_HEAD) if simple else Table()
    for col in columns:
        t.add_column(col, justify="left" if col in left else "right", no_wrap=col in no_wrap)
    for row in rows:
        t.add_row(*row)
    return t


def results_line(label: str, values: Sequence[tuple[str, str]], suffix: str = "") -> str:
    """``label: name value, name value`` (a summary line of one result), then ``suffix``."""
    return f"{label}: " + ", ".join(f"{name} {value}" for name, value in values) + suffix


def json_result(out: Console, result: Any) -> None:
    """The result as indented, coloured JSON (objects with ``to_dict`` as their dict)."""
    from dino_pipe.atomic import json_text

    out.print_json(json_text(result.to_dict() if hasattr(result, "to_dict") else result))


def weights_title(src: dict) -> str:
    """``MODEL (which @ step N)`` or ``MODEL (random init)``: where an evaluation's weights came from."""
    weights = "random init" if src.get("random_init") else f"{src.get('which')} @ step {src.get('step')}"
    return f"{src.get('model', src.get('arch'))} ({weights})"


def class_label(facts: dict, c: int) -> str:
    """A class as the tables show it: its folder name (an ImageNet wnid), and its human name when known."""
    classes, names = facts.get("classes") or [], facts.get("class_names") or []
    label = str(classes[c]) if c < len(classes) else f"class {c}"
    return f"{label} {names[c]}" if c < len(names) else label


def class_names(out: Console, facts: dict, shown: int = 4) -> None:
    """The first classes with their human names, when the shard set's manifest has them (ImageNet wnids)."""
    names = facts.get("class_names")
    if names:
        pairs = ", ".join(class_label(facts, c) for c in range(min(shown, len(names))))
        more = f", … ({len(names)} in data.train.class_names of the JSON)" if len(names) > shown else ""
        out.print(f"classes: {pairs}{more}", highlight=False, soft_wrap=True)


def worst_classes(out: Console, results: list[dict], facts: dict, shown: int = 5) -> None:
    """The classes k-NN gets wrong most (at k = 20, or the first k), named as the shard set names them."""
    row = next((r for r in results if r["k"] == 20), results[0])
    per_class = [(acc, c) for c, acc in enumerate(row.get("class_top1") or []) if acc is not None]
    if len(per_class) < 2:
        return
    worst = [(class_label(facts, c), f"{acc:.1f}") for acc, c in sorted(per_class)[:shown]]
    out.print(results_line(f"worst classes at k = {row['k']} (top-1 %)", worst), highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------------
# shards: shard, verify
# ----------------------------------------------------------------------------------------------

#: what each --layout is, in the shard summary (the option keeps its short names)
LAYOUT_WORDS = {"imagenet": "train/val folders of classes", "imagefolder": "class folders",
                "unlabeled": "a folder of images"}


def shard_summary(out: Console, result: dict) -> None:
    """``shard``: the source and layout, one table row per written set, then each set's notes."""
    n_classes = result["sets"][0]["num_classes"]
    labels = f"{n_classes} classes" if n_classes else "no labels"
    layout = LAYOUT_WORDS.get(result["layout"], result["layout"])
    layout += f": {result['form']}" if result.get("form") not in (None, "folders") else ""
    title(out, f"{result['source']} -> {result['out']} ({layout}, {labels})")
    rows = [(s["split"], f"{s['num_samples']:,}", str(s["shards"]), f"{s['bytes'] / 1e6:,.1f}", str(s["converted"]),
             str(s["skipped"]), f"{s['images_per_s']:,.0f}" if s["images_per_s"] else "-", s["status"])
            for s in result["sets"]]
    out.print(table(("set", "samples", "shards", "MB", "converted", "skipped", "img/s", "status"), rows,
                    left=("set", "status"), no_wrap=("status",), simple=True))
    for note in result.get("notes", []):
        out.print(note, markup=False)
    for s in result["sets"]:
        _shard_set_notes(out, s)


def _shard_set_notes(out: Console, s: dict) -> None:
    """What one written set converted, ignored, did not follow or skipped, and where the manifest lists it."""
    if s["converted"]:
        out.print(f"{s['split']}: converted {s['converted']} image(s) to RGB JPEG; paths and reasons are under "
                  f"'converted_files' in {s['out']}/manifest.json")
    if s["ignored"]:
        out.print(f"{s['split']}: ignored {s['ignored']} non-image file(s) (by extension, or hidden)")
    if s.get("skipped_links"):
        out.print(
            f"[yellow]{s['split']}: did not follow {s['skipped_links']} symlink(s)[/] leaving the source tree "
            f"or looping; paths and reasons are under 'skipped_links' in {s['out']}/manifest.json"
        )
    if s["skipped"]:
        out.print(f"[yellow]{s['split']}: skipped {s['skipped']} unreadable file(s)[/]; "
                  f"paths and reasons are under 'skipped' in {s['out']}/manifest.json")


def verify_report(out: Console, err: Console, result: dict) -> None:
    """``verify``: one table row per set, its notes, then each problem as a ``bad:`` line on ``err``."""
    title(out, f"verify {result['path']} (decoded by DALI on {result['sets'][0]['device']})")
    rows = [(Path(s["path"]).name, "yes" if s["manifest"] else "[yellow]none[/]", str(s["shards"]),
             f"{s['samples']:,}", f"{s['decoded']:,}", str(len(s["bad_shards"])), str(len(s["bad_samples"])),
             "[green]ok[/]" if s["ok"] else "[bold red]BAD[/]") for s in result["sets"]]
    out.print(table(("set", "manifest", "shards", "samples", "decoded", "bad shards", "bad samples", "result"), rows,
                    left=("set", "manifest", "result"), simple=True))
    for s in result["sets"]:
        if not s["manifest"]:
            out.print(
                f"[yellow]{s['path']}: no manifest.json[/]: checked tars, indexes and decoding only "
                "(no checksums or labels range)"
            )
        if s["extra_tars"]:
            out.print(
                f"[yellow]{s['path']}: {len(s['extra_tars'])} tar file(s) not in the manifest[/] "
                f"(ignored by readers), e.g. {s['extra_tars'][0]}"
            )
        for p in s["problems"]:
            where = "/".join(x for x in (s["path"], p["shard"]) if x)
            sample = f" sample {p['sample']}:" if p["sample"] else ""
            err.print(f"[bold red]bad:[/] {where}:{sample} {p['problem']}", highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------------
# data and train: bench loader, train
# ----------------------------------------------------------------------------------------------


def loader_rate(out: Console, result: dict, batch_size: int, threads: int) -> None:
    """``bench loader``: images/s and views/s on one line, then the whole result as JSON."""
    out.print(f"[bold]{result['loader']}[/] on {result['device']}: {result['images_per_s']:,.1f} images/s, "
              f"{result['views_per_s']:,.1f} views/s ({result['views_per_image']} views/image, batch {batch_size}, "
              f"{threads} threads)")
    json_result(out, result)


def train_summary(out: Console, result: Optional[dict]) -> None:
    """``train`` (rank 0): the summary as JSON, and how far online k-NN moved from the untrained network."""
    if not result:
        return
    json_result(out, result)
    knn = result.get("online_knn")
    if knn and knn.get("untrained_top1") is not None and knn["step"] > 0:
        out.print(f"online k-NN top-1 (k = {knn['k']}): untrained {knn['untrained_top1']:.2f} % (step 0) -> "
                  f"{knn['top1']:.2f} % (step {knn['step']}), {knn['top1'] - knn['untrained_top1']:+.2f} points",
                  highlight=False)


# ----------------------------------------------------------------------------------------------
# eval: eval knn, eval linear, viz attention, export, viz curves
# ----------------------------------------------------------------------------------------------


def knn_report(out: Console, result: dict, baseline: Optional[dict]) -> None:
    """``eval knn``: the table of k, its notes, the data line, the worst classes and the untrained baseline."""
    title(out, f"k-NN  {weights_title(result['checkpoint'])}, T = {result['knn']['temperature']}")
    rows = [(str(r["k"]) if r["k"] == r["k_effective"] else f"{r['k']} (-> {r['k_effective']})", f"{r['top1']:.2f}",
             f"{r['top5']:.2f}") for r in result["results"]]
    out.print(table(("k", "top-1 %", "top-5 %"), rows))
    for r in result["results"]:
        if r.get("note"):
            out.print(f"[yellow]k = {r['k']}[/]: {r['note']}", highlight=False)
    d = result["data"]
    out.print(f"train {d['train'].get('num_samples')} / val {d['val'].get('num_samples')} images, "
              f"{d['train'].get('num_classes')} classes; features {result['knn']['feature_dim']}-d "
              f"{result['knn']['feature_dtype']}; {result['seconds']['features']:.1f} s features, "
              f"{result['seconds']['knn']:.1f} s k-NN", highlight=False)
    worst_classes(out, result["results"], d["train"])
    knn_baseline(out, result, baseline)


def knn_baseline(out: Console, result: dict, baseline: Optional[dict]) -> None:
    """The untrained network's top-1 next to this result's (from the run's step-0 online k-NN), or how to get it."""
    if result["checkpoint"].get("random_init"):
        return
    if baseline is None:
        out.print("untrained baseline: not measured by this run on these sets; add --random-init to measure it",
                  highlight=False)
        return
    row = next((r for r in result["results"] if r["k"] == baseline["k"]), None)
    here = f" -> {row['top1']:.2f} % here ({row['top1'] - baseline['top1']:+.2f} points)" if row else ""
    out.print(f"untrained network (the run's online k-NN at step 0, k = {baseline['k']}): top-1 "
              f"{baseline['top1']:.2f} %{here}", highlight=False, soft_wrap=True)


def linear_report(out: Console, result: dict) -> None:
    """``eval linear``: the last 10 epochs (the best marked ``*``), the classes, and the best epoch."""
    title(out, f"linear probe  {weights_title(result['checkpoint'])}, {result['linear']['feature_dim']}-d features")
    best = result["best"]
    rows = [(f"{e['epoch']}{' *' if best and e['epoch'] == best['epoch'] else ''}", f"{e['lr']:.2e}",
             f"{e['train_loss']:.4f}", f"{e['top1']:.2f}", f"{e['top5']:.2f}") for e in result["epochs"][-10:]]
    out.print(table(("epoch", "lr", "train loss", "top-1 %", "top-5 %"), rows))
    class_names(out, result.get("data", {}).get("train", {}))
    if best:
        out.print(results_line("best", [("epoch", f"{best['epoch']}"), ("top-1", f"{best['top1']:.2f} %"),
                                        ("top-5", f"{best['top5']:.2f} %")],
                               "" if result["complete"] else " (not finished: rerun to resume)"), highlight=False)


def attention_report(out: Console, result: dict, size: Optional[int], threshold: Optional[float]) -> None:
    """``viz attention``: the resize note, then one line per picture written."""
    if result["note"]:
        out.print(f"note: {result['note']}", highlight=False, soft_wrap=True)
    elif size is None:
        out.print(
            f"images resized to {result['size']} px on the shorter side (the run's data.global_size; --size to change)",
            highlight=False,
        )
    for entry in result["images"]:
        share = entry.get("share_of_patches_for_mass")
        extra = f"; patches holding {threshold:.0%} of each head's attention: " + \
            " ".join(f"{s:.0%}" for s in share) if share else ""
        out.print(
            f"{entry['png']}  ({entry['width']}x{entry['height']} px, {entry['heads']} heads{extra})", highlight=False
        )


def export_summary(out: Console, info: dict, which: str, sidecar: Path) -> None:
    """``export``: what was written, and how to load it."""
    out.print(f"wrote {info['file']} ({info['parameters']:,} parameters, {info['arch']}, {which} @ step "
              f"{info['source']['step']}) and {sidecar}", highlight=False)
    out.print(f"load it with: {info['load']}", highlight=False)


def curves_summary(out: Console, result: dict) -> None:
    """``viz curves``: the PNG, the loss's first and last value, and the k-NN points drawn."""
    n_knn, n_online = len(result["knn"]), len(result["online_knn"])
    knn = f"{n_knn} k-NN result{'' if n_knn == 1 else 's'}" + (
        f", {n_online} online k-NN point{'' if n_online == 1 else 's'}" if n_online else "")
    out.print(f"{result['png']}: loss {result['loss_first']:.3f} -> {result['loss_last']:.3f} over "
              f"{result['logged_steps']} logged steps; {knn}", highlight=False)
