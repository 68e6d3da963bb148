"""The layer rule of docs/architecture.md: imports go one way, down its list.

Every import of the package's own modules counts — at module level, for type checking
only, or inside a function — since each is a dependency a reader must follow. The
list is read from docs/architecture.md itself, so the document and the code cannot
drift apart.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "asynccp"

#: Imports up the list that are there on purpose (importer, imported): none left.
ALLOWED_UP: set[tuple[str, str]] = set()


def layers() -> list[str]:
    """The layer list of docs/architecture.md: module or package names, top first."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## The layers", 1)[1].split("```", 2)[1]
    names = [re.split(r"\s", line.strip(), maxsplit=1)[0] for line in block.splitlines()]
    return [n.removesuffix(".py").rstrip("/") for n in names if n]


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name → file."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, wherever the import statement is."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if (
                target.startswith("asynccp")
                and target != name
                and not name.startswith(target + ".")
            ):
                found.add(target)
    return found


def layer_of(name: str, order: list[str]) -> int:
    if name == "asynccp":
        return order.index("__init__")
    first = name.split(".")[1]
    assert first in order, f"{name} is not in docs/architecture.md's layer list"
    return order.index(first)


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_is_in_the_layer_list() -> None:
    order = layers()
    for name in modules():
        layer_of(name, order)


def test_imports_go_down_the_layer_list() -> None:
    order = layers()
    up = {
        (importer, imported)
        for importer, targets in graph().items()
        for imported in targets
        if layer_of(imported, order) > layer_of(importer, order)
    }
    assert up <= ALLOWED_UP, sorted(up - ALLOWED_UP)


def test_no_import_circles() -> None:
    g = graph()
    seen: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(g[node]):
            if seen.get(nxt) == 1:
                raise AssertionError(" -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for node in sorted(g):
        if node not in seen:
            visit(node, [node])


def test_every_module_has_a_row_in_the_module_table() -> None:
    """docs/architecture.md's "Modules" table names every file of the package."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w/]+\.py)`", table))
    files = {p.relative_to(ROOT / "asynccp").as_posix() for p in (ROOT / "asynccp").rglob("*.py")}
    assert sorted(files - named) == [], "modules without a row in docs/architecture.md"
    assert sorted(named - files) == [], "rows naming modules that do not exist"
