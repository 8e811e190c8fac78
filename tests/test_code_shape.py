"""The code's shape: no function or method in dino_pipe/ is longer than 80 lines (CONTRIBUTING: one job each)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "dino_pipe"
MAX_LINES = 80


def function_lengths(root: Path) -> list[tuple[str, str, int]]:
    """``(file, qualified name, lines)`` of every function and method under ``root``, counted from the
    ``def`` line to the last line of its body (decorators not counted; nested functions count in their
    enclosing function too, and are reported on their own as well)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += [(str(path.relative_to(root.parent)), name, n) for name, n in _lengths(tree, "")]
    return found


def _lengths(node: ast.AST, prefix: str) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of the functions under ``node``, nested ones included."""
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{child.name}"
            found.append((name, child.end_lineno - child.lineno + 1))
            found += _lengths(child, f"{name}.")
        elif isinstance(child, ast.ClassDef):
            found += _lengths(child, f"{prefix}{child.name}.")
        else:
            found += _lengths(child, prefix)
    return found

def test_no_function_is_longer_than_80_lines():
    lengths = function_lengths(PKG)
    assert len(lengths) > 100  # the walk sees the package
    long = sorted(((n, f"{f}:{name}:{n}") for f, name, n in lengths if n > MAX_LINES), reverse=True)
    assert not long, f"functions over {MAX_LINES} lines (file:name:lines): " + ", ".join(s for _, s in long)


def test_the_length_check_sees_a_long_method(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(85))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"class A:\n    def long(self):\n{body}\n\n\ndef short():\n    pass\n")
    lengths = {name: n for _, name, n in function_lengths(tmp_path / "pkg")}
    assert lengths == {"A.long": 86, "short": 2}
