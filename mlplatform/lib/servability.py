"""What production may serve: the one rule that promotion and the serving app both apply to a registry version.

A version is servable when every gate passed, or when a person forced it into production with ``promote --force``
(an audited approval, recorded as ``mlplatform.forced_*`` tags on the version). Promotion refuses a move that this
rule would not serve, and serving loads exactly what this rule allows, so the audit trail never names a champion
that production does not serve. Pure logic over a version's tags: no MLflow, no Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

GATES_TAG = "gates"
GATES_PASSED = "passed"
GATE_TAG_PREFIX = "gate."
"""Per-gate verdicts: ``gate.<name>`` is ``passed`` or ``failed`` (written at training)."""

FORCED_BY_TAG = "mlplatform.forced_by"
FORCED_REASON_TAG = "mlplatform.forced_reason"
FORCED_OVERRIDE_TAG = "mlplatform.forced_override"
FORCED_AT_TAG = "mlplatform.forced_at"


@dataclass(frozen=True)
class Servability:
    """The verdict on one version, and the facts behind it (shown by ``GET /v1/models`` and ``promote``)."""

    servable: bool
    gates_passed: bool
    failed_gates: tuple[str, ...]
    forced_by: str | None = None
    forced_reason: str | None = None
    forced_override: str | None = None
    why_not: str | None = None  # why production refuses it (None when servable)

    @property
    def forced(self) -> bool:
        return self.forced_by is not None


def failed_gates(tags: Mapping[str, str]) -> tuple[str, ...]:
    """The names of the gates a version failed (its ``gate.<name>`` tags), in name order."""
    return tuple(sorted(k[len(GATE_TAG_PREFIX):] for k, v in tags.items()
                        if k.startswith(GATE_TAG_PREFIX) and v != GATES_PASSED))


def gates_text(tags: Mapping[str, str]) -> str:
    """``gates=failed (threshold, sanity)``: the verdict and, when recorded, which gates failed."""
    failed = failed_gates(tags)
    return f"gates={tags.get(GATES_TAG)}" + (f" ({', '.join(failed)})" if failed else "")


def servability(tags: Mapping[str, str]) -> Servability:
    """May production serve the version with these registry tags? Its gates passed, or a person forced it."""
    passed = tags.get(GATES_TAG) == GATES_PASSED
    failed = failed_gates(tags)
    forced_by = tags.get(FORCED_BY_TAG) or None
    facts = {"gates_passed": passed, "failed_gates": failed, "forced_by": forced_by,
             "forced_reason": tags.get(FORCED_REASON_TAG), "forced_override": tags.get(FORCED_OVERRIDE_TAG)}
    if passed or forced_by is not None:
        return Servability(servable=True, **facts)
    failed_text = f" (failed: {', '.join(failed)})" if failed else ""
    return Servability(servable=False, why_not=f"gates tag is {tags.get(GATES_TAG)!r}, not {GATES_PASSED!r}{failed_text}, "
                       "and no person forced it (promote --force): never served", **facts)


def forced_tags(actor: str, reason: str, override: str, at: str) -> dict[str, str]:
    """The tags that record a forced approval on the version (who, why, which rule was overridden, when)."""
    return {FORCED_BY_TAG: actor, FORCED_REASON_TAG: reason, FORCED_OVERRIDE_TAG: override, FORCED_AT_TAG: at}
