"""A broken spec as an error in the UI: one asset per broken spec file, whose check fails with the file, the keys
and what to fix, while every valid model of every team keeps its assets, schedules and sensors."""

from __future__ import annotations

import re
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from mlplatform.defs.metadata import TEAM_TAG, rows_table
from mlplatform.specs import SpecProblem
from mlplatform.specs.schema import TEAM_PATTERN
from mlplatform.specs.teams import NO_TEAM

SPEC_ERRORS_GROUP = "spec_errors"
SPEC_VALID_CHECK = "spec_is_valid"
NO_TEAM_KEY = "no_team"


def _key_part(text: str) -> str:
    """A piece of an asset key (letters, digits and ``_`` only)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_") or "spec"


def spec_error_key(file: Path, team: str | None) -> AssetKey:
    """``spec_errors/<team>/<file stem>`` (``no_team`` for a spec of no team)."""
    return AssetKey(["spec_errors", _key_part(team) if team else NO_TEAM_KEY, _key_part(file.stem)])


def build_spec_error_assets(broken: dict[Path, list[SpecProblem]], teams: dict[Path, str | None]
                            ) -> list[AssetsDefinition]:
    """One asset per broken spec file in the group ``spec_errors``, owned by the file's team (``team:<team>``, tag
    ``team``) so the team's filter shows it. Its description and metadata list the problems at load; its check
    ``spec_is_valid`` fails with them when executed (materializing the asset runs it)."""
    built: list[AssetsDefinition] = []
    used: set[AssetKey] = set()
    for file, problems in broken.items():
        team = teams.get(file)
        team = team if team and re.match(TEAM_PATTERN, team) else None  # a folder's name may not be a team name
        key = spec_error_key(file, team)
        number = 2
        while key in used:  # the same file name in two spec roots
            key = AssetKey([*key.path[:-1], f"{_key_part(file.stem)}_{number}"])
            number += 1
        used.add(key)
        built.append(_error_asset(key, file, team, problems))
    return built


def _error_asset(key: AssetKey, file: Path, team: str | None, problems: list[SpecProblem]) -> AssetsDefinition:
    table = MetadataValue.md(rows_table(["key", "problem and fix"], [(p.key, p.message) for p in problems]))
    details = {"file": MetadataValue.path(str(file)), "team": team or NO_TEAM, "keys": ", ".join(p.key for p in problems),
               "problems": table}
    listed = "\n".join(f"- `{p.key}`: {p.message}" for p in problems)

    @asset(key=key, group_name=SPEC_ERRORS_GROUP, owners=[f"team:{team}"] if team else [],
           tags={TEAM_TAG: team} if team else {}, kinds={"yaml"}, metadata=details,
           description=f"BROKEN SPEC `{file}`: this model is not loaded until the file is fixed (the other models "
           f"load as usual). {len(problems)} problem(s):\n{listed}",
           check_specs=[AssetCheckSpec(SPEC_VALID_CHECK, asset=key, description="The spec file loads: fails with "
                                       "the file, the keys and what to fix")])
    def spec_error() -> MaterializeResult:
        return MaterializeResult(metadata=details, check_results=[AssetCheckResult(
            check_name=SPEC_VALID_CHECK, passed=False, severity=AssetCheckSeverity.ERROR, metadata=details,
            description=f"{file}: " + "; ".join(f"{p.key}: {p.message}" for p in problems)[:2000])])

    return spec_error
