"""The dbt project object, kept apart from ``@dbt_assets`` so ``dagster-dbt project prepare-and-package`` works on it."""

from __future__ import annotations

from pathlib import Path

from dagster_dbt import DbtProject

from mlplatform.lib.settings import DBT_PROJECT_DIR

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def manifest_is_stale(project: DbtProject = dbt_project) -> bool:
    """True when the manifest is missing or older than a file of the dbt project (SQL, YAML, macros)."""
    manifest = Path(project.manifest_path)
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    sources = [p for p in Path(project.project_dir).rglob("*") if p.suffix in {".sql", ".yml", ".yaml"}
               and "target" not in p.parts and "dbt_packages" not in p.parts]
    return any(p.stat().st_mtime > built for p in sources)


def prepare_manifest(project: DbtProject = dbt_project) -> Path:
    """``dbt parse`` (seconds), only when the manifest is missing or stale: never on every import."""
    if manifest_is_stale(project):
        project.preparer.prepare(project)
    return Path(project.manifest_path)
