"""Which estimator classes (and model factories) a spec may name, decided before anything is imported.

Importing a module runs its code, so ``estimator.class: this.Foo`` in an untrusted spec would run
code at validate time. A spec may only name classes from allowed module prefixes: ``sklearn.`` by
default, plus what a team adds through the ``mlplatform.estimators`` entry point group (each
entry point's value is a module prefix, e.g. ``xgboost = "xgboost"``; it is read, never loaded) or
``MLPLATFORM_ESTIMATOR_MODULES`` (comma-separated prefixes). A module found inside the spec's
own folder is refused even under an allowed name: a ``sklearn.py`` beside a spec must not shadow
the real one. ``estimator.factory`` (a function of the team's package returning its own pipeline) follows the same
rules, and its module's source is fingerprinted so a change to the team's code shows on every version.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

ESTIMATOR_MODULES_ENV = "MLPLATFORM_ESTIMATOR_MODULES"
ENTRY_POINT_GROUP = "mlplatform.estimators"
DEFAULT_PREFIXES: tuple[str, ...] = ("sklearn",)


class EstimatorNotAllowed(ValueError):
    """The spec names a class outside the allowed modules, or one that would be imported from the spec's folder."""


@functools.lru_cache(maxsize=8)
def _entry_point_prefixes(search_path: tuple[str, ...]) -> tuple[str, ...]:
    """The entry points' prefixes, read once per ``sys.path`` (scanning every installed distribution costs ~20 ms,
    once per spec before: a second at 50 specs). A package installed into a running process's environment is seen
    by the next process, as a code location reload starts one."""
    return tuple(ep.value.strip() for ep in entry_points(group=ENTRY_POINT_GROUP))


def allowed_prefixes() -> list[str]:
    """The module prefixes estimator classes may come from: default, entry points, then the environment."""
    found = list(DEFAULT_PREFIXES)
    found += _entry_point_prefixes(tuple(sys.path))
    found += [p.strip() for p in os.environ.get(ESTIMATOR_MODULES_ENV, "").split(",")]
    return list(dict.fromkeys(p.rstrip(".") for p in found if p.strip(". ")))


def is_allowed_module(module_name: str, prefixes: list[str]) -> bool:
    """``sklearn`` allows ``sklearn`` and ``sklearn.linear_model`` but not ``sklearnx``."""
    return any(module_name == p or module_name.startswith(p + ".") for p in prefixes)


def check_allowed(dotted: str, spec_folder: Path | None = None) -> None:
    """Raise :class:`EstimatorNotAllowed` unless ``dotted`` may be imported; imports nothing itself."""
    module_name = dotted.rpartition(".")[0]
    prefixes = allowed_prefixes()
    if not is_allowed_module(module_name, prefixes):
        raise EstimatorNotAllowed(
            f"found {dotted!r}; estimator classes may only come from the modules {', '.join(p + '.*' for p in prefixes)}"
            f" (nothing was imported). A team adds a package with the entry point group {ENTRY_POINT_GROUP!r} or "
            f"{ESTIMATOR_MODULES_ENV}=package1,package2"
        )
    if spec_folder is None:
        return
    top = module_name.split(".")[0]
    try:
        found = importlib.util.find_spec(top)  # a top-level name: located, not executed
    except (ImportError, ValueError):
        return  # the import that follows reports it
    locations = [found.origin] if found and found.origin else []
    locations += list(found.submodule_search_locations or []) if found else []
    folder = spec_folder.resolve()
    for location in locations:
        if Path(location).resolve().is_relative_to(folder):
            raise EstimatorNotAllowed(f"found {dotted!r}; module {top!r} would be imported from the spec's folder "
                                      f"({location}); code beside a spec is never run. Install the package instead")


def import_estimator_class(dotted: str, spec_folder: Path | None = None) -> type:
    """The estimator class, after :func:`check_allowed`; training should import classes only through here."""
    check_allowed(dotted, spec_folder)
    module_name, _, class_name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def import_factory(dotted: str, spec_folder: Path | None = None) -> Any:
    """The model factory (``package.module.function``), after :func:`check_allowed`; training imports it only here."""
    check_allowed(dotted, spec_folder)
    module_name, _, function_name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), function_name)


def code_fingerprint(dotted: str) -> str:
    """SHA-256 of the source of the module that defines ``dotted`` (a factory): what a version records of the team's
    code, so that a change to its preprocessing or model shows in the audit and in ``reproduce``. The module must
    already be allowed (:func:`check_allowed`); it is imported, not re-run."""
    module = importlib.import_module(dotted.rpartition(".")[0])
    origin = getattr(module, "__file__", None)
    if not origin:
        raise ValueError(f"{dotted!r}: its module has no source file to fingerprint")
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest()
