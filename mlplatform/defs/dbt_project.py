"""The dbt project specs with ``staging`` run, found and prepared only when such a spec asks.

A team that installs the wheel and stages nothing needs no dbt project at all, so nothing here touches dbt on
import: the project is ``MLPLATFORM_DBT_PROJECT_DIR`` (default: the bundled one, package data of the wheel), and its
manifest goes where :attr:`~mlplatform.lib.settings.Settings.dbt_manifest_dir` says (under ``MLPLATFORM_HOME``
unless it is the bundled project of a source checkout). dagster-dbt is imported inside the functions (2-7 s).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mlplatform.lib.settings import DBT_PROJECT_ENV, Settings, load_settings
from mlplatform.specs.loader import DbtColumns, DbtProjectUnavailable, dbt_manifest_columns

if TYPE_CHECKING:
    from dagster_dbt import DbtProject


def dbt_project_problem(settings: Settings) -> str | None:
    """Why the configured dbt project cannot be used (named with the setting that fixes it), or None."""
    folder = settings.dbt_project_dir
    if not folder.is_dir():
        return (f"no dbt project at {folder}: a spec with `staging` runs a model of the team's dbt project; set "
                f"{DBT_PROJECT_ENV} to its folder (the one holding dbt_project.yml)")
    if not (folder / "dbt_project.yml").is_file():
        return f"{folder} has no dbt_project.yml: set {DBT_PROJECT_ENV} to the folder of the team's dbt project"
    return None


@functools.cache
def _project(project_dir: Path, manifest_dir: Path) -> DbtProject:
    from dagster_dbt import DbtProject

    profiles = project_dir if (project_dir / "profiles.yml").is_file() else None  # else dbt's own (~/.dbt)
    return DbtProject(project_dir=project_dir, target_path=manifest_dir, profiles_dir=profiles)


def platform_dbt_project(settings: Settings | None = None) -> DbtProject:
    """The configured dbt project (:class:`DbtProjectUnavailable` naming the setting when there is none)."""
    settings = settings or load_settings()
    problem = dbt_project_problem(settings)
    if problem:
        raise DbtProjectUnavailable(problem)
    return _project(settings.dbt_project_dir, settings.dbt_manifest_dir)


def manifest_is_stale(project_dir: Path, manifest: Path) -> bool:
    """True when the manifest is missing or older than a file of the dbt project (SQL, YAML, macros)."""
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    sources = [p for p in project_dir.rglob("*") if p.suffix in {".sql", ".yml", ".yaml"}
               and "target" not in p.parts and "dbt_packages" not in p.parts]
    return any(p.stat().st_mtime > built for p in sources)


def prepare_manifest(project: DbtProject | None = None) -> Path:
    """``dbt parse`` (seconds), only when the manifest is missing or stale: never on every import. Its logs go
    beside the manifest (dagster-dbt points dbt's log path at the target path)."""
    project = project or platform_dbt_project()
    if manifest_is_stale(Path(project.project_dir), Path(project.manifest_path)):
        Path(project.manifest_path).parent.mkdir(parents=True, exist_ok=True)
        project.preparer.prepare(project)
    return Path(project.manifest_path)


def dbt_columns(settings: Settings | None = None) -> DbtColumns:
    """The dbt models' declared columns, for checking specs with ``staging``: the project is found and its manifest
    read (prepared first when missing or stale) at the first lookup, so a folder of specs that stage nothing never
    needs a dbt project. A missing project raises :class:`DbtProjectUnavailable` (the loader reports it)."""
    settings = settings or load_settings()
    lookup: list[Callable[[str], list[str] | None]] = []

    def columns(dbt_model: str) -> list[str] | None:
        if not lookup:
            project = platform_dbt_project(settings)
            manifest = settings.dbt_manifest_path
            if manifest_is_stale(settings.dbt_project_dir, manifest):
                manifest = prepare_manifest(project)
            lookup.append(dbt_manifest_columns(manifest))
        return lookup[0](dbt_model)

    return columns
