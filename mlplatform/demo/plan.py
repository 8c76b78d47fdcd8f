"""The demo's production plan: which models keep their last weeks out of the history run and live them as production.

It is the example's own configuration (``demo/production.yaml`` beside the specs: the bundled one is
``mlplatform/examples/demo/production.yaml``), not part of the model spec contract: a platform user never writes
one, and a specs folder without it runs the demo's history with no production weeks. Held-back weeks are weeks the
serving version never trained on, so the live numbers the demo prints are production numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

PLAN_FILE = Path("demo") / "production.yaml"
"""Where a specs folder keeps the demo's production plan, relative to the folder."""

REPLAY = "replay"
WEEK_BY_WEEK = "week_by_week"
SHAPES = (REPLAY, WEEK_BY_WEEK)


class PlanError(ValueError):
    """The plan file cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class ProductionWeeks:
    """One model's production in the demo: its last ``weeks`` weeks, lived in one ``shape``."""

    weeks: int
    shape: str = WEEK_BY_WEEK

    @property
    def week_by_week(self) -> bool:
        return self.shape == WEEK_BY_WEEK


def load_plan(specs_dir: Path, models: Iterable[str]) -> dict[str, ProductionWeeks]:
    """The plan in ``specs_dir / PLAN_FILE`` by model (empty without the file); every problem raises :class:`PlanError`."""
    file = Path(specs_dir) / PLAN_FILE
    if not file.exists():
        return {}
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        raise PlanError(f"{file}: not readable YAML ({str(error).splitlines()[0]}); fix or delete the file") from None
    extra = sorted(set(raw) - {"production"}) if isinstance(raw, dict) else []
    entries = raw.get("production") if isinstance(raw, dict) else None
    if extra or not isinstance(entries, dict):
        raise PlanError(f"{file}: expected one key `production:` mapping model names to {{weeks: N, shape: "
                        f"{'|'.join(SHAPES)}}}" + (f"; found {', '.join(map(str, extra))}" if extra else ""))
    known = sorted(models)
    plan = {}
    for model, entry in entries.items():
        where = f"{file}: production.{model}"
        if model not in known:
            raise PlanError(f"{where}: no model spec named {model!r}; the specs define {', '.join(known) or 'none'}")
        if not isinstance(entry, dict) or set(entry) - {"weeks", "shape"}:
            raise PlanError(f"{where}: expected {{weeks: N, shape: {'|'.join(SHAPES)}}}; found {entry!r}")
        weeks, shape = entry.get("weeks"), entry.get("shape", WEEK_BY_WEEK)
        if not isinstance(weeks, int) or isinstance(weeks, bool) or weeks < 1:
            raise PlanError(f"{where}.weeks: found {weeks!r}; expected a whole number of weeks, 1 or more")
        if shape not in SHAPES:
            raise PlanError(f"{where}.shape: found {shape!r}; allowed: {', '.join(SHAPES)}")
        plan[model] = ProductionWeeks(weeks, shape)
    return plan


def held_back(plan: dict[str, ProductionWeeks]) -> dict[str, int]:
    """Weeks each model keeps out of the history run, to live later as production."""
    return {model: entry.weeks for model, entry in plan.items()}
