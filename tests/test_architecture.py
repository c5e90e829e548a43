"""The package's shape (docs/architecture.md, "Layers"): no import cycle, no import from a lower
layer to a higher one, no function over 50 lines. Read from the source with ``ast``: every
``import`` and ``from … import``, at module level or inside a function (a lazy import is still
a dependency), relative imports resolved."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "alexnet_mp"

LAYERS: list[tuple[str, ...]] = [
    ("errors", "section", "layers", "files"),
    ("model",),
    ("parallel",),
    ("data", "charts"),
    ("config",),
    ("profile",),
    ("train",),
    ("plots", "explore", "commands", "data.cli", "profile.cli", "train.cli", "__main__", ""),
]
"""Floors, ground first: a module may import its own floor and those below. A module belongs to
the longest name listed that is it or a package holding it ("" is the package itself)."""

MAX_FUNCTION_LINES = 50


def modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted name under the package ("" for the package) -> (file, whether it is a package)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _owner(name: str, known) -> str | None:
    """The module ``name`` lives in: itself, or the package a name imported from it belongs to."""
    while name not in known:
        if not name:
            return None
        name = name.rpartition(".")[0]
    return name


def imports(known: dict[str, tuple[Path, bool]]) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: line}, inside the package only."""
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in known.items():
        here = name.split(".") if name else []
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here if is_package else here[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                elif node.module == "alexnet_mp" or (node.module or "").startswith("alexnet_mp."):
                    module = node.module.removeprefix("alexnet_mp").lstrip(".")
                else:
                    continue
                targets = [f"alexnet_mp.{module}.{a.name}" if module else f"alexnet_mp.{a.name}"
                           for a in node.names]
            else:
                continue
            for target in targets:
                if target != "alexnet_mp" and not target.startswith("alexnet_mp."):
                    continue
                owner = _owner(target.removeprefix("alexnet_mp").lstrip("."), known)
                if owner is not None and owner != name:
                    edges.setdefault(owner, node.lineno)
        graph[name] = edges
    return graph


def floor(name: str) -> int:
    best, level = -1, None
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (prefix == "" or name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    assert level is not None, f"alexnet_mp.{name} is on no floor of LAYERS; give it one"
    return level


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Each import cycle once, as the modules around it."""
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for n in graph.get(m, {}):
            if state.get(n) == "open":
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def upward(graph: dict[str, dict[str, int]]) -> list[str]:
    return [f"alexnet_mp.{m or '__init__'}:{line} imports alexnet_mp.{n} (floor {floor(m)} -> {floor(n)})"
            for m, edges in sorted(graph.items()) for n, line in edges.items() if floor(n) > floor(m)]


def long_functions(known: dict[str, tuple[Path, bool]]) -> list[str]:
    return [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for path, _ in known.values() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


@pytest.fixture(scope="module")
def graph():
    return imports(modules())


def test_the_graph_sees_the_imports_it_must(graph):
    assert "errors" in graph["config"] and "section" in graph["data.config"]  # module level, relative
    assert "profile.strategies" in graph["plots"]  # inside a function
    assert "data.config" in graph["config"] and "parallel.plans" in graph["config"]


def test_no_import_cycle(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(f"alexnet_mp.{m}" for m in c) for c in found)


def test_no_import_runs_up_the_floors(graph):
    found = upward(graph)
    assert not found, "imports up the floors (docs/architecture.md, Layers):\n" + "\n".join(found)


def test_no_function_over_50_lines():
    found = long_functions(modules())
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)


def test_docs_draw_the_same_floors():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    table = text[text.index("## Layers"):].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| floor")]
    drawn = [tuple(n.strip(" `") for n in row.split("|")[2].split(",")) for row in rows]
    expected = [tuple(n or "alexnet_mp" for n in names) for names in reversed(LAYERS)]
    assert drawn == expected
