"""Code beside a spec is never run: modules in the spec folder named like real ones are refused at validate.

A ``duckdb.py`` (or ``pandas.py``, ``json.py``, ...) beside the specs would be imported instead of the real
module by a process started in that folder. :mod:`mlplatform.import_path` keeps the folder off ``sys.path``;
:func:`shadowing_modules` names such files at validate, so the team learns of them before anything runs.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path


def modules_in(folder: Path) -> dict[str, Path]:
    """The top-level modules a folder would provide on ``sys.path``: ``*.py``/``*.pyc``/extensions, packages."""
    found: dict[str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / "__init__.py").exists():
            found[entry.name] = entry
        elif entry.suffix in (".py", ".pyc", ".so", ".pyd") and entry.is_file():
            found.setdefault(entry.name.split(".")[0], entry)
    return found


@functools.cache
def installed_top_level_modules() -> frozenset[str]:
    """Top-level module names the installed distributions provide (read once: it scans every distribution)."""
    from importlib.metadata import packages_distributions

    return frozenset(packages_distributions())


def importable_elsewhere(name: str, folder: Path) -> bool:
    """Whether ``name`` is a module Python or an installed package provides (so one in ``folder`` shadows it)."""
    import importlib.util

    if name in sys.stdlib_module_names or name in sys.builtin_module_names or name == "mlplatform":
        return True
    if name in installed_top_level_modules():
        return True
    try:
        spec = importlib.util.find_spec(name)  # locates, never executes
    except (ImportError, ValueError):
        return False
    origin = spec.origin if spec else None
    return bool(origin) and not Path(origin).resolve().is_relative_to(folder.resolve())


def shadowing_modules(folder: Path) -> list[tuple[Path, str]]:
    """(file, module name) of every module in ``folder`` that has the name of a standard or installed module."""
    return [(path, name) for name, path in modules_in(folder).items() if importable_elsewhere(name, folder)]
