"""Where the platform keeps its state.

Everything the platform writes at run time lives under ``MLPLATFORM_HOME`` so a
laptop user can delete one folder to start over, and a team can point it at a
shared volume.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
BUNDLED_SPECS_DIR = PACKAGE_DIR / "examples"
REPO_DIR = PACKAGE_DIR.parent
DBT_PROJECT_DIR = REPO_DIR / "dbt_project"


@dataclass(frozen=True)
class Settings:
    """Resolved locations; build it with :func:`load_settings`."""

    home: Path
    specs_dir: Path

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def dbt_target_dir(self) -> Path:
        return self.home / "dbt"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"


def load_settings() -> Settings:
    """Read ``MLPLATFORM_HOME`` (default ``./.mlplatform``) and ``MLPLATFORM_SPECS`` (default: bundled examples)."""
    home = Path(os.environ.get("MLPLATFORM_HOME", ".mlplatform")).expanduser().resolve()
    specs = os.environ.get("MLPLATFORM_SPECS")
    specs_dir = Path(specs).expanduser().resolve() if specs else BUNDLED_SPECS_DIR
    return Settings(home=home, specs_dir=specs_dir)


def ensure_home(settings: Settings) -> None:
    """Create the state folders and export the variables that dbt and Dagster read."""
    for folder in (settings.home, settings.dagster_home, settings.dbt_target_dir):
        folder.mkdir(parents=True, exist_ok=True)
    os.environ["MLPLATFORM_WAREHOUSE"] = str(settings.warehouse_path)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    # dbt runs as a subprocess: use the one installed next to this interpreter even when the venv is not activated.
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
