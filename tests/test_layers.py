"""Packages depend one way: no two packages of dino_pipe import each other, and each imports only from the
layers below it, counting every import (module level, inside functions, ``if TYPE_CHECKING:``, relative,
``from dino_pipe import x``).

``python tests/test_layers.py`` prints the package graph (each package and what it imports).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "dino_pipe"

# Top to bottom. A package (or top-level module) may import only from a layer below its own; packages in
# one layer know nothing of each other. "dino_pipe" is the package's own __init__ (the version).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("workspace", "sample_data", "render"),  # the CLI's helpers: where a workspace keeps things; the demo data
    # download; how results are printed
    ("eval",),
    ("train",),
    ("data",),
    ("shards",),
    ("storage", "models", "objective", "runs"),
    ("config", "lock", "progress"),
    ("distributed",),
    ("atomic", "cpus", "device"),
    ("errors",),
    ("dino_pipe",),
)
LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def module_name(rel: str) -> tuple[str, bool]:
    """(dotted module name, is a package __init__) of a file's path relative to the repo root."""
    parts = list(Path(rel).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def imports_of(name: str, is_pkg: bool, source: str, known: set[str]) -> set[str]:
    """Every dino_pipe module ``name`` imports, anywhere in ``source``; ``from pkg import mod`` names the module."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m == "dino_pipe" or m.startswith("dino_pipe.")}


def unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: ``dino_pipe.train.loop`` -> ``train``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "dino_pipe"


def package_graph(files: dict[str, str]) -> dict[str, dict[str, set[str]]]:
    """{package: {package it imports: {"module -> module", ...}}} for ``files``."""
    known = {module_name(rel)[0] for rel in files}
    graph: dict[str, dict[str, set[str]]] = {unit(m): {} for m in known}
    for rel, source in files.items():
        name, is_pkg = module_name(rel)
        for target in imports_of(name, is_pkg, source, known):
            a, b = unit(name), unit(target)
            if a != b:
                graph[a].setdefault(b, set()).add(f"{name} -> {target}")
    return graph


def cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Groups of packages that reach each other (each group sorted; one group per strongly connected part)."""
    reach = {a: set(graph[a]) for a in graph}
    changed = True
    while changed:
        changed = False
        for a in reach:
            more = set().union(*(reach.get(b, set()) for b in reach[a])) - reach[a]
            if more:
                reach[a] |= more
                changed = True
    groups = {tuple(sorted({a} | {b for b in reach[a] if a in reach.get(b, set())})) for a in reach if a in reach[a]}
    return sorted(list(g) for g in groups)


def layer_violations(graph: dict[str, dict[str, set[str]]]) -> list[str]:
    """Each import that does not go to a lower layer (or comes from or goes to a package not in LAYERS)."""
    bad = []
    for a, targets in sorted(graph.items()):
        for b, where in sorted(targets.items()):
            if a not in LEVEL or b not in LEVEL:
                bad.append(f"{a} -> {b}: not placed in LAYERS ({sorted(where)[0]})")
            elif LEVEL[b] <= LEVEL[a]:
                bad.append(f"{a} -> {b}: not a lower layer ({sorted(where)[0]})")
    return bad


def repo_files() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted(PKG.rglob("*.py"))}


def describe(graph: dict[str, dict[str, set[str]]]) -> str:
    """The graph by layer, top to bottom: ``train -> config, data, distributed, ...``."""
    order = sorted(graph, key=lambda u: (LEVEL.get(u, -1), u))
    return "\n".join(f"{u} -> {', '.join(sorted(graph[u], key=lambda b: (LEVEL.get(b, -1), b))) or '(nothing)'}"
                     for u in order)


# ------------------------------------------------------------------------------------------------ the tree


def test_no_two_packages_import_each_other():
    graph = package_graph(repo_files())
    assert "dino_pipe.train.loop -> dino_pipe.distributed" in graph["train"]["distributed"]  # the walk sees imports
    assert cycles(graph) == [], describe(graph)


def test_each_package_imports_only_from_the_layers_below_it():
    graph = package_graph(repo_files())
    assert layer_violations(graph) == [], describe(graph)


def test_training_and_evaluation_share_only_what_sits_below_both():
    graph = package_graph(repo_files())
    assert "eval" not in graph["train"] and "train" not in graph["eval"]
    assert {"distributed", "runs"} <= set(graph["train"]) & set(graph["eval"])
    assert "shards" not in graph["storage"]


# ------------------------------------------------------------------------------------------------ the checks


def test_the_walk_sees_every_form_of_import():
    files = {
        "dino_pipe/__init__.py": "",
        "dino_pipe/errors.py": "",
        "dino_pipe/distributed.py": "",
        "dino_pipe/train/__init__.py": "",
        "dino_pipe/train/a.py": "from dino_pipe import distributed as D\nfrom dino_pipe import __version__\n",
        "dino_pipe/train/b.py": "def f():\n    from ..errors import UserError\n",
        "dino_pipe/data/__init__.py": "",
        "dino_pipe/data/c.py": "if True:\n    import dino_pipe.errors\n",
    }
    graph = package_graph(files)
    assert set(graph["train"]) == {"distributed", "dino_pipe", "errors"}
    assert graph["train"]["errors"] == {"dino_pipe.train.b -> dino_pipe.errors"}
    assert set(graph["data"]) == {"errors"}


def test_the_checks_find_a_cycle_and_an_upward_import():
    """A synthetic tree where train imports eval at module level and eval imports train inside a function."""
    files = {
        "dino_pipe/__init__.py": "",
        "dino_pipe/train/__init__.py": "",
        "dino_pipe/train/metrics.py": "from dino_pipe.eval.online_knn import OnlineKnn\n",
        "dino_pipe/eval/__init__.py": "",
        "dino_pipe/eval/online_knn.py": "def f():\n    from ..train import distributed\n",
        "dino_pipe/data/__init__.py": "",
        "dino_pipe/data/x.py": "from dino_pipe.config import Config\n",
        "dino_pipe/config.py": "",
    }
    graph = package_graph(files)
    assert cycles(graph) == [["eval", "train"]]
    assert layer_violations(graph) == [
        "train -> eval: not a lower layer (dino_pipe.train.metrics -> dino_pipe.eval.online_knn)"]
    assert cycles({"a": {"b": set()}, "b": {"c": set()}, "c": {"a": set()}, "d": {"a": set()}}) == [["a", "b", "c"]]
    files["dino_pipe/newpkg/__init__.py"] = "from dino_pipe.config import Config\n"
    assert any(v.startswith("newpkg -> config: not placed") for v in layer_violations(package_graph(files)))


if __name__ == "__main__":
    sys.stdout.write(describe(package_graph(repo_files())) + "\n")
