"""The spec folder stays off the import path, so code beside a spec is never run.

Python puts the working directory first on ``sys.path`` for ``python -m``, and Dagster puts its
working directory there for ``dagster dev`` and ``dagster asset materialize``. Started from the spec
folder, a ``duckdb.py`` there would be imported instead of DuckDB, running whatever it holds.
:func:`spec_folder_off_import_path` runs when the ``mlplatform`` package is imported, before any
third-party import of ours: only the standard library is imported here.
"""

import os  # os and sys only: both are loaded before any path entry is searched
import sys

SPECS_ENV = "MLPLATFORM_SPECS"


def spec_folder_off_import_path(environ: dict[str, str] | None = None) -> list[str]:
    """Remove every ``sys.path`` entry that is the spec folder (``''`` and ``.`` mean the working directory);
    return what was removed. Refuse (ImportError) when a module was already imported from the folder."""
    specs = (os.environ if environ is None else environ).get(SPECS_ENV, "").strip()
    if not specs:
        return []  # the bundled examples: a folder of the installed package, with no code of a user's
    folder = os.path.realpath(os.path.expanduser(specs))
    removed = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) == folder]
    sys.path[:] = [entry for entry in sys.path if entry not in removed]
    inside = tuple({folder + os.sep, os.path.abspath(os.path.expanduser(specs)) + os.sep})
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if isinstance(origin, str) and origin.startswith(inside) and name.partition(".")[0] != "mlplatform":
            raise ImportError(f"module {name!r} was imported from the spec folder {folder} ({origin}); code beside "
                              "a spec is never run: move it out of the folder, or start the process elsewhere")
    return removed
