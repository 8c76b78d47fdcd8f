"""The package's layers point one way: specs at the bottom, lib on specs, Dagster wiring on both, CLI on top."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlplatform"


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """Every module a file under ``folder`` imports (absolute names), keyed by the file's path."""
    found: dict[str, set[str]] = {}
    for file in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(file.relative_to(PACKAGE.parent))] = names
    return found


def offenders(folder: Path, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {file: sorted(n for n in names if n.startswith(forbidden))
            for file, names in imported_modules(folder).items() if any(n.startswith(forbidden) for n in names)}


def test_specs_import_neither_lib_nor_dagster_nor_the_wiring():
    assert offenders(PACKAGE / "specs", ("mlplatform.lib", "mlplatform.defs", "dagster", "mlplatform.cli")) == {}


def test_lib_imports_no_dagster_and_nothing_above_it():
    assert offenders(PACKAGE / "lib", ("dagster", "mlplatform.defs", "mlplatform.cli", "mlplatform.runner",
                                       "mlplatform.definitions", "mlplatform.serving")) == {}


def test_the_wiring_does_not_import_the_cli_or_the_runner():
    assert offenders(PACKAGE / "defs", ("mlplatform.cli", "mlplatform.runner", "mlplatform.definitions")) == {}
