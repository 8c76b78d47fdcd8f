"""Platform policies: what a spec may not switch off, set once for many teams instead of in each spec.

A policy file (``policies.yaml`` beside the specs, or the file ``MLPLATFORM_POLICIES`` names, which wins) defines
named policies; a spec names the one it falls under (``policy``), and ``default`` puts every spec that names none
under one. The built-in ``regulated`` needs no file. A spec that breaks its policy is refused at load, with the
policy and the key named: the gates of a regulated model cannot be relaxed by editing one YAML file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlplatform.lib.alerts import AlertsConfig

if TYPE_CHECKING:
    from mlplatform.specs.schema import ModelSpec

POLICIES_ENV = "MLPLATFORM_POLICIES"
POLICIES_FILE = "policies.yaml"
"""Beside the specs; never read as a model spec."""


class Policy(BaseModel):
    """What every spec under this policy must keep switched on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(default="", description="What the policy is for, shown in refusals.")
    require_fairness: bool = Field(default=False, description="The spec must have a `fairness` section (the gate).")
    require_manual_approval: bool = Field(default=False, description="`rollout.approval` must be `manual`: a "
                                          "person promotes every version.")
    require_training_data_gate: bool = Field(default=False, description="`gates.training_data.enabled` must stay "
                                             "true.")
    min_canary_percent: int | None = Field(default=None, ge=0, le=100, description="`rollout.canary_percent` at "
                                           "least this: a new version meets live traffic before it is champion.")
    latency_budget_p99_ms: float | None = Field(default=None, gt=0, description="The serving latency budget (p99, "
                                                "ms): `GET /v1/models` and `/metrics` report each model's measured "
                                                "p99 against it.")


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str | None = Field(default=None, description="The policy of every spec that names none.")
    policies: dict[str, Policy] = Field(default_factory=dict)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="Where lifecycle alerts go: destinations "
                                 "and routes per team, policy or model (docs/alerts.md; mlplatform.lib.alerts).")


BUILTIN_POLICIES: dict[str, Policy] = {
    "regulated": Policy(description="credit, insurance and other decisions about people: fairness gate, manual "
                        "approval and the training-data gate are mandatory (model cards are written for every version "
                        "whatever the spec says)", require_fairness=True, require_manual_approval=True,
                        require_training_data_gate=True),
}


class PolicyFileError(ValueError):
    """The policy file itself is wrong: (file, key, message) like a spec problem."""

    def __init__(self, file: Path, key: str, message: str):
        super().__init__(f"{file}: {key}: {message}")
        self.file, self.key, self.message = file, key, message


def policies_path(spec_folder: Path) -> Path | None:
    """``MLPLATFORM_POLICIES`` when set (it must exist), else ``policies.yaml`` beside the specs when present."""
    configured = os.environ.get(POLICIES_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    beside = Path(spec_folder) / POLICIES_FILE
    return beside if beside.is_file() else None


def load_policies(file: Path | None) -> tuple[dict[str, Policy], str | None]:
    """(every policy by name, built-ins included; the default policy or None). Raises :class:`PolicyFileError`."""
    if file is None:
        return dict(BUILTIN_POLICIES), None
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise PolicyFileError(file, POLICIES_ENV, f"cannot be read: {error}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise PolicyFileError(file, "(yaml)", f"not valid YAML: {error}") from None
    try:
        parsed = PolicyFile.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        hint = ("see docs/alerts.md" if first["loc"][:1] == ("alerts",)
                else f"a policy has the keys {', '.join(Policy.model_fields)}")
        raise PolicyFileError(file, key, f"{first['msg']}; {hint}") from None
    known = {**BUILTIN_POLICIES, **parsed.policies}
    if parsed.default is not None and parsed.default not in known:
        raise PolicyFileError(file, "default", f"found {parsed.default!r}; allowed: {', '.join(sorted(known))}")
    return known, parsed.default


def resolve_policy(spec: ModelSpec, policies: dict[str, Policy], default: str | None) -> Policy | None:
    """The policy the spec falls under (its own ``policy``, else the file's default); None for none or an unknown one."""
    name = spec.policy or default
    return policies.get(name) if name is not None else None


def policy_problems(spec: ModelSpec, policies: dict[str, Policy], default: str | None) -> Iterable[tuple[str, str]]:
    """(key, message) for every rule of the spec's policy that the spec breaks; nothing when it names none."""
    name = spec.policy or default
    if name is None:
        return
    policy = policies.get(name)
    if policy is None:
        yield "policy", f"found {name!r}; allowed: {', '.join(sorted(policies))}"
        return
    under = f"policy {name!r}" + ("" if spec.policy else " (the policy file's default)")
    if policy.require_fairness and spec.fairness is None:
        yield "fairness", f"missing; {under} requires the fairness gate: add a fairness section with the sensitive columns"
    if policy.require_manual_approval and spec.rollout.approval != "manual":
        yield "rollout.approval", f"found {spec.rollout.approval!r}; {under} requires 'manual' (a person approves)"
    if policy.require_training_data_gate and not spec.gates.training_data.enabled:
        yield "gates.training_data.enabled", f"found false; {under} requires the training-data gate: remove the key"
    if policy.min_canary_percent is not None and spec.rollout.canary_percent < policy.min_canary_percent:
        yield "rollout.canary_percent", (f"found {spec.rollout.canary_percent}; {under} requires at least "
                                         f"{policy.min_canary_percent}")
