"""Hashes of a model spec, recorded with every version: which spec a version's gates ran under.

The hash is over the normalized :class:`~mlplatform.specs.ModelSpec` (defaults filled in, canonical
JSON), not over the file's bytes: reformatting the YAML or spelling a default out changes nothing.

Besides the whole spec's hash, each section that decides what the gates judge has its own hash
(:data:`GATE_SECTIONS`), so a refusal can say *what* changed. Sections that do not change a gate's
verdict (description, owner, team, source location, partitions, estimator, drift monitoring, automation,
rollout, staging) are left out on purpose: editing an owner must not strand every approved version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from mlplatform.specs import ModelSpec

GATE_SECTIONS = ("task", "target", "features", "columns", "gates", "fairness", "evaluation", "metrics")
"""Spec sections that decide what the model gates judge: the rows and columns the model sees, the gates'
own settings, the fairness limits, the decision threshold (f1 and the fairness rates depend on it) and the team's
own metrics (one may be the gates' metric). A
version whose gates ran under other values of these is not vouched for by its gates under the current spec."""

SECTIONS_HASHED_WHEN_SET = ("evaluation", "metrics")
"""Gate sections added after versions began recording hashes: hashed only when they differ from their defaults,
so a version recorded before them still matches a spec that leaves them at their defaults."""

SPEC_HASH_TAG = "spec.hash"
GATES_HASH_TAG = "spec.gates_hash"
SECTION_TAG_PREFIX = "spec.gates_hash."
SPEC_ARTIFACT = "spec.json"


ADDED_WHEN_SET = {("metrics",): {}, ("estimator", "factory"): None, ("scoring",): {"batch": False, "table": None},
                  ("features", "text"): [], ("features", "text_max_chars"): 10_000, ("policy",): None,
                  ("gates", "beat_champion", "test"): "non_inferiority", ("gates", "beat_champion", "margin"): 0.0,
                  ("rollout", "require_live_fairness"): False, ("team",): None, ("owners",): [],
                  ("rollout", "auto_promote"): "immediate", ("rollout", "ramp"): [],
                  ("rollout", "analysis"): {"interval_minutes": 60, "window_minutes": 60, "min_requests": 200,
                                            "min_minutes": 30.0, "alpha": 0.01, "latency_p99_ratio": 1.5,
                                            "max_prediction_shift": 0.1, "automatic_stop": True,
                                            "business_metric": None}}
"""Keys added after versions began recording hashes: left out of the normalized spec while at their defaults, so a
version recorded before them still has the hash of a spec that does not use them."""


def normalized_spec(spec: ModelSpec) -> dict[str, Any]:
    """The spec as JSON-ready data, defaults filled in, in the YAML's own key names (``estimator.class``)."""
    data = spec.model_dump(mode="json", by_alias=True)
    for path, default in ADDED_WHEN_SET.items():
        *parents, key = path
        section = data
        for parent in parents:
            section = section.get(parent, {})
        if key in section and section[key] == default:
            del section[key]
    return data


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def spec_hash(spec: ModelSpec) -> str:
    """SHA-256 of the whole normalized spec."""
    return _digest(normalized_spec(spec))


def section_hashes(spec: ModelSpec) -> dict[str, str]:
    """One SHA-256 per gate section (:data:`GATE_SECTIONS`; those of :data:`SECTIONS_HASHED_WHEN_SET` only when set)."""
    data = normalized_spec(spec)
    defaults = ModelSpec.model_fields
    hashes = {}
    for section in GATE_SECTIONS:
        if section in SECTIONS_HASHED_WHEN_SET and getattr(spec, section) == defaults[section].get_default(
                call_default_factory=True):
            continue
        hashes[section] = _digest(data.get(section))
    return hashes


def spec_tags(spec: ModelSpec) -> dict[str, str]:
    """What a version records of its spec: the whole hash, the gate hash and one hash per gate section."""
    sections = section_hashes(spec)
    return {SPEC_HASH_TAG: spec_hash(spec), GATES_HASH_TAG: _digest(sections),
            **{f"{SECTION_TAG_PREFIX}{name}": value for name, value in sections.items()}}


def changed_gate_sections(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str] | None:
    """The gate sections whose hash differs between a version's tags and the current spec's :func:`spec_tags`.

    None when the version recorded no spec hash (trained before hashes were recorded): unknown, not changed.
    """
    if GATES_HASH_TAG not in recorded:
        return None
    if recorded[GATES_HASH_TAG] == current.get(GATES_HASH_TAG):
        return []
    changed = [name for name in GATE_SECTIONS
               if recorded.get(f"{SECTION_TAG_PREFIX}{name}") != current.get(f"{SECTION_TAG_PREFIX}{name}")]
    return changed or ["(the set of gate sections)"]
