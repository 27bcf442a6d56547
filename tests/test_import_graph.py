"""The package's module-level import graph has no circles, and the segment path stays light.

Module-level imports are what runs when a module is first imported: a circle among them makes
the import order matter (a half-initialised module), so none is allowed. Imports inside
functions (deferred on purpose) and under ``if TYPE_CHECKING:`` are not edges.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "nucleiseg"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """Absolute names imported by the statements that run at import time."""
    found: set[str] = set()
    base = name if is_package else name.rpartition(".")[0]

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                    module = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)  # maybe submodules
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports at module level}`` (packages included via their parents)."""
    files = {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        imported = _top_level_imports(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py")
        edges = set()
        for target in imported:
            if not target.startswith(PACKAGE):
                continue
            parts = target.split(".")
            for k in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ first
                prefix = ".".join(parts[:k])
                if prefix in files and prefix != name and not name.startswith(prefix + "."):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_checker_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("import x\nfrom . import y\nif TYPE_CHECKING:\n    import z\ndef f():\n    import w\n")
    assert _top_level_imports(tree, "pkg.mod", False) == {"x", "pkg", "pkg.y"}


def test_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "nucleiseg.inference.segmenter" in graph
    assert circles(graph) == []


@pytest.mark.parametrize("module, absent", [
    ("nucleiseg.inference.batch", ("torch", "albumentations", "pandas", "skimage.transform", "scipy.cluster", "nucleiseg.training")),
    ("nucleiseg.cli.main", ("torch", "onnxruntime", "scipy", "skimage")),
])
def test_segment_path_imports_stay_light(module: str, absent: tuple[str, ...]) -> None:
    """The default segment path never imports PyTorch or the training stack; the CLI parser imports no numerics."""
    code = f"import sys, {module}; print(' '.join(m for m in {absent!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
