"""Teams: which team a spec belongs to, spec roots whose subfolders are teams, and what loaded per team.

Dozens of teams share one platform. A spec names its team (``team``), or lives in a team folder
(``<spec root>/<team>/*.yaml``), or names none. The loader keeps one team's broken spec from taking the other
teams' models down (:class:`SpecLoad`): every valid spec loads, and each broken file is reported with its team.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlplatform.specs.schema import TEAM_PATTERN, ModelSpec, SpecProblem

RESERVED_FOLDERS = frozenset({"data", "demo"})
"""Subfolders of a spec root that are never team folders: data files beside the specs, the demo's production plan
(``demo/production.yaml``). Hidden folders and folders starting with ``_`` are skipped too."""

NO_TEAM = "(no team)"
"""How reports name the specs that belong to no team."""

SpecRoots = Path | str | Sequence[Path | str]
"""One spec folder, or several (``MLPLATFORM_SPECS`` as a path list)."""


def as_roots(folders: SpecRoots) -> list[Path]:
    """The spec roots as a list of paths."""
    if isinstance(folders, (str, Path)):
        return [Path(folders)]
    return [Path(f) for f in folders]


def yaml_files(folder: Path, skip: frozenset[str] = frozenset()) -> list[Path]:
    """``*.yaml``/``*.yml`` directly in ``folder``: hidden files (editor locks) and the names in ``skip`` left out."""
    return sorted(f for f in [*folder.glob("*.yaml"), *folder.glob("*.yml")]
                  if not f.name.startswith(".") and f.name not in skip and f.is_file())


def team_folders(root: Path, skip: frozenset[str]) -> list[Path]:
    """The subfolders of ``root`` holding spec files directly (a component folder holds only ``defs.yaml``)."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    return [d for d in entries if d.is_dir() and not d.name.startswith((".", "_")) and d.name not in RESERVED_FOLDERS
            and yaml_files(d, skip | {"defs.yaml"})]


def folder_team_problem(folder: Path) -> str | None:
    """Why a team folder's name cannot be a team's name, or None."""
    if re.match(TEAM_PATTERN, folder.name):
        return None
    return (f"the team folder {folder.name!r} is not a team name (lowercase letters, digits, '-' and '_', starting "
            f"with a letter); rename the folder, or move the file into the spec root {folder.parent}")


def declared_team(raw: Any) -> str | None:
    """The team a spec's YAML names (``team``, else ``owner: team:<name>``), read without validating anything: used
    to file a broken spec under its team."""
    if not isinstance(raw, dict):
        return None
    team, owner = raw.get("team"), raw.get("owner")
    if isinstance(team, str) and team:
        return team
    if isinstance(owner, str) and owner.startswith("team:") and re.match(TEAM_PATTERN, owner[5:]):
        return owner[5:]
    return None


def team_mismatch(spec: ModelSpec, folder_team: str, folder: Path) -> str | None:
    """A spec in team folder ``folder_team`` that names another team: the problem, naming both."""
    if spec.team is None or spec.team == folder_team:
        return None
    return (f"found {spec.team!r}, but the file is in the folder of team {folder_team!r} ({folder}); a spec in a "
            f"team folder belongs to that team: remove the key, or move the file to {folder.parent / spec.team}")


@dataclass
class SpecLoad:
    """What a set of spec roots holds: the valid specs, and every problem, per spec file and platform-wide."""

    specs: list[ModelSpec] = field(default_factory=list)
    """The specs without any problem (each with its team and policy resolved)."""
    broken: dict[Path, list[SpecProblem]] = field(default_factory=dict)
    """Each broken spec file (resolved) and its problems: that model does not load."""
    fatal: list[SpecProblem] = field(default_factory=list)
    """Problems of no single spec (a spec root missing or empty, the policy file, code beside the specs): nothing
    should load until they are fixed."""
    teams: dict[Path, str | None] = field(default_factory=dict)
    """The team of every spec file (resolved), broken or not, as far as it can be read."""

    @property
    def problems(self) -> list[SpecProblem]:
        """Every problem, the platform-wide ones first, then per file in load order."""
        return [*self.fatal, *(problem for problems in self.broken.values() for problem in problems)]

    def add(self, file: Path, key: str, message: str) -> None:
        self.broken.setdefault(file.resolve(), []).append(SpecProblem(file=str(file), key=key, message=message))

    def by_team(self) -> dict[str, TeamReport]:
        """Per team (sorted, :data:`NO_TEAM` last): the models that loaded and the broken files."""
        reports: dict[str, TeamReport] = {}
        for spec in self.specs:
            reports.setdefault(spec.team_name or NO_TEAM, TeamReport(spec.team_name or NO_TEAM)).models.append(spec)
        for file, problems in self.broken.items():
            team = self.teams.get(file) or NO_TEAM
            reports.setdefault(team, TeamReport(team)).broken[file] = problems
        return dict(sorted(reports.items(), key=lambda item: (item[0] == NO_TEAM, item[0])))


@dataclass
class TeamReport:
    """One team's part of a load."""

    team: str
    models: list[ModelSpec] = field(default_factory=list)
    broken: dict[Path, list[SpecProblem]] = field(default_factory=dict)

    def summary(self) -> str:
        """``team fraud: 3 model(s) loaded (a, b, c); 1 broken spec file(s): x.yaml``"""
        loaded = ", ".join(spec.name for spec in self.models)
        line = f"team {self.team}: {len(self.models)} model(s) loaded" + (f" ({loaded})" if loaded else "")
        if self.broken:
            line += f"; {len(self.broken)} broken spec file(s): " + ", ".join(str(f) for f in self.broken)
        return line
