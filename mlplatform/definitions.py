"""The platform's Dagster code location: the :class:`~mlplatform.component.ModelLifecycle` component applied to
every spec file in ``MLPLATFORM_SPECS`` (default: the bundled examples; several spec roots, team folders).

One team's broken spec does not take the other teams' models down: every valid spec loads, and each broken file
becomes an asset in the group ``spec_errors`` whose check fails with the file, key and fix (and the problems are
printed, per team). ``MLPLATFORM_STRICT_SPECS=1`` restores the strict load: any broken spec raises
:class:`mlplatform.specs.SpecError` here, so the location does not load and the UI shows every problem, one line
each. Platform-wide problems (a spec root missing, the policy file, code beside the specs) always stop the load.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dagster import Definitions, MetadataValue

from mlplatform.component import ModelLifecycle, platform_settings
from mlplatform.defs.dbt_project import dbt_columns
from mlplatform.specs import SpecError, SpecLoad, SpecProblem, load_spec_set


def build_definitions() -> Definitions:
    settings = platform_settings()
    loaded = load_spec_set(settings.spec_roots, dbt_columns(settings))
    if loaded.fatal or (loaded.problems and settings.strict_specs):
        error = SpecError(loaded.problems)
        print(error, file=sys.stderr, flush=True)  # the list first and briefly: Dagster prints its traceback before
        raise error
    built, failed = [], []
    for spec in loaded.specs:
        try:
            built.append(ModelLifecycle(spec).build_defs())
        except Exception as error:  # noqa: BLE001 - one model's definitions failing must not take the others down
            if settings.strict_specs:
                raise
            failed.append(error)
            problem = SpecProblem(file=str(spec.spec_file), key="(definitions)", message=(
                f"the model's Dagster definitions could not be built: {type(error).__name__}: {error}"))
            loaded.broken[Path(spec.spec_file)] = [problem]
    if failed and not built:
        raise failed[0]  # every model failed alike: the platform's problem (a setting), not one spec's
    loaded.specs = [spec for spec in loaded.specs if Path(spec.spec_file) not in loaded.broken]
    report = team_report(loaded)
    if loaded.broken:
        print("mlplatform: the models of broken spec files are not loaded (asset group spec_errors):\n"
              + "\n".join(f"  - {problem}" for problem in loaded.problems) + "\n" + "\n".join(report),
              file=sys.stderr, flush=True)
    from mlplatform.defs.spec_errors import build_spec_error_assets

    errors = Definitions(assets=build_spec_error_assets(loaded.broken, loaded.teams),
                         metadata={"mlplatform/teams": MetadataValue.md("\n".join(f"- {line}" for line in report))})
    from mlplatform.defs.alerts_sensor import alerts_definitions

    return Definitions.merge(*built, errors, alerts_definitions(loaded.specs, settings))


def team_report(loaded: SpecLoad) -> list[str]:
    """One line per team: the models loaded and the broken spec files."""
    return [report.summary() for report in loaded.by_team().values()]


defs = build_definitions()
