"""The package's layers point one way: specs at the bottom, lib on specs, Dagster wiring and serving on both, the CLI
on top, the demo beside the product; and no module imports itself back through others (no import circle).

Imports are read from the source with ``ast``, every one of them: an import inside a function (done lazily to keep
the CLI fast) still ties two modules, so it counts, as it does for ``farm-studio look``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlplatform"

INTENDED_CIRCLES: set[frozenset[str]] = set()
"""Import circles the package means to have: none."""


def module_name(file: Path) -> str:
    parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    return {module_name(file): file for file in sorted(PACKAGE.rglob("*.py"))}


def imported_names(file: Path, module: str) -> set[str]:
    """The absolute names a file imports, anywhere in it: ``from a import b`` gives ``a.b`` (a module or a name in
    ``a``, resolved by :func:`import_graph`); relative imports are made absolute."""
    is_package = file.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            names |= {f"{origin}.{alias.name}" for alias in node.names}
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (the longest known prefix of each imported name)."""
    modules = package_modules()
    graph: dict[str, set[str]] = {}
    for module, file in modules.items():
        targets = set()
        for name in imported_names(file, module):
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in modules:
                    if candidate != module:
                        targets.add(candidate)
                    break
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan): each is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(circle: frozenset[str], graph: dict[str, set[str]]) -> str:
    ties = [f"{a} -> {b}" for a in sorted(circle) for b in sorted(graph[a] & circle)]
    return "circle of " + ", ".join(sorted(circle)) + ": " + "; ".join(ties)


def test_the_cycle_finder_sees_a_circle_through_a_lazy_import_and_a_relative_one(tmp_path):
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}, "p.e": set()}
    assert circles(graph) == [frozenset({"p.a", "p.b", "p.c"})]
    assert circles({"p.a": {"p.b"}, "p.b": set()}) == []
    source = tmp_path / "mod.py"
    source.write_text("def later():\n    from mlplatform.lib import promotion\n\nfrom .. import names\n")
    assert imported_names(source, "mlplatform.lib.mod") >= {"mlplatform.lib.promotion", "mlplatform.names"}


def test_no_import_circles_anywhere_in_the_package():
    graph = import_graph()
    assert {"mlplatform.cli", "mlplatform.serving.app", "mlplatform.demo.production"} <= set(graph)
    unintended = [c for c in circles(graph) if c not in INTENDED_CIRCLES]
    assert not unintended, "\n".join(describe(c, graph) for c in unintended)


def offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Modules under ``mlplatform.<folder>`` that import a name starting with one of ``forbidden``."""
    found = {}
    for module, file in package_modules().items():
        if module == f"mlplatform.{folder}" or module.startswith(f"mlplatform.{folder}."):
            bad = sorted(n for n in imported_names(file, module) if n.startswith(forbidden))
            if bad:
                found[module] = bad
    return found


def test_specs_import_neither_lib_nor_dagster_nor_the_wiring():
    assert offenders("specs", ("mlplatform.lib", "mlplatform.defs", "dagster", "mlplatform.cli",
                               "mlplatform.serving", "mlplatform.demo")) == {}


def test_lib_imports_no_dagster_and_nothing_above_it():
    assert offenders("lib", ("dagster", "mlplatform.defs", "mlplatform.cli", "mlplatform.demo",
                             "mlplatform.definitions", "mlplatform.serving", "mlplatform.component")) == {}


def test_the_wiring_and_serving_do_not_import_the_cli_or_the_demo():
    above = ("mlplatform.cli", "mlplatform.demo", "mlplatform.definitions")
    assert offenders("defs", above) == {}
    assert offenders("serving", (*above, "mlplatform.defs", "dagster")) == {}


def test_only_the_cli_reaches_the_demo():
    """The demo lives apart: the product never imports it (the CLI's `demo` command is its one door)."""
    users = {module for module, file in package_modules().items() if not module.startswith("mlplatform.demo")
             and any(n.startswith("mlplatform.demo") for n in imported_names(file, module))}
    assert users == {"mlplatform.cli"}
