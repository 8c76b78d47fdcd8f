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
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from mlplatform.specs.alerts_config import AlertsConfig

if TYPE_CHECKING:
    from mlplatform.specs.schema import ModelSpec

POLICIES_ENV = "MLPLATFORM_POLICIES"
POLICIES_FILE = "policies.yaml"
"""Beside the specs; never read as a model spec."""
GROUPS_ENV = "MLPLATFORM_APPROVER_GROUPS"
"""A YAML/JSON file of group -> members (for example exported from the company directory); its groups win over the
policy file's ``groups`` of the same name."""


class Policy(BaseModel):
    """What every spec under this policy must keep switched on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(default="", description="What the policy is for, shown in refusals.")
    require_fairness: bool = Field(default=False, description="The spec must have a `fairness` section (the gate).")
    require_manual_approval: bool = Field(default=False, description="`rollout.approval` must be `manual`: a "
                                          "person promotes every version.")
    require_training_data_gate: bool = Field(default=False, description="`gates.training_data.enabled` must stay "
                                             "true.")
    min_canary_percent: int | None = Field(default=None, ge=0, le=100, description="The share a new version "
                                           "starts its canary at (`rollout.canary_percent`, or the ramp's first step) "
                                           "at least this, and no `approval: auto` with `auto_promote: immediate`: a "
                                           "new version meets live traffic before it is champion.")
    latency_budget_p99_ms: float | None = Field(default=None, gt=0, description="The serving latency budget (p99, "
                                                "ms): `GET /v1/models` and `/metrics` report each model's measured "
                                                "p99 against it.")
    require_live_fairness: bool = Field(default=False, description="A version is promoted only once the `fairness` "
                                        "measures on its live predictions pass (as `rollout.require_live_fairness`): "
                                        "the spec needs a fairness section and shadow or canary traffic.")
    approvers: list[str] = Field(default_factory=list, description="Who may promote or roll back (names as given "
                                 "with `--by`). Empty, and no `approver_groups`: anyone may.")
    approver_groups: list[str] = Field(default_factory=list, description="Groups whose members may approve too "
                                       "(the policy file's `groups`, or the file `MLPLATFORM_APPROVER_GROUPS` names).")
    required_approvals: int = Field(default=1, ge=1, le=5, description="Distinct people who must approve a version "
                                    "before it becomes champion (the first approvals are recorded and wait).")

    _name: str = PrivateAttr(default="")
    _members: dict[str, tuple[str, ...]] = PrivateAttr(default_factory=dict)  # approver group -> its members

    @property
    def name(self) -> str:
        return self._name

    def allowed_approvers(self) -> dict[str, str] | None:
        """Who may approve: the name (case-folded) -> why ("named" or "group G"); None when anyone may."""
        if not self.approvers and not self.approver_groups:
            return None
        allowed: dict[str, str] = {}
        for group in self.approver_groups:
            for member in self._members.get(group, ()):
                allowed.setdefault(member.strip().casefold(), f"group {group}")
        for person in self.approvers:
            allowed[person.strip().casefold()] = "named"
        return allowed


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str | None = Field(default=None, description="The policy of every spec that names none.")
    groups: dict[str, list[str]] = Field(default_factory=dict, description="Approver groups: group -> members.")
    policies: dict[str, Policy] = Field(default_factory=dict)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="Where lifecycle alerts go: destinations "
                                 "and routes per team, policy or model (docs/alerts.md; mlplatform.lib.alerts).")


BUILTIN_POLICIES: dict[str, Policy] = {
    "regulated": Policy(description="credit, insurance and other decisions about people: fairness gate, manual "
                        "approval and the training-data gate are mandatory (model cards are written for every version "
                        "whatever the spec says); two distinct people approve every champion",
                        require_fairness=True, require_manual_approval=True, require_training_data_gate=True,
                        required_approvals=2),
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
    """(every policy by name, built-ins included; the default policy or None). Raises :class:`PolicyFileError`.

    A policy the file defines under a built-in's name keeps the built-in's rules it does not set itself (naming
    the approvers of ``regulated`` must not switch its gates off)."""
    if file is None:
        return _named(dict(BUILTIN_POLICIES), load_groups({})), None
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
    known = {**BUILTIN_POLICIES, **{
        name: (BUILTIN_POLICIES[name].model_copy(update=policy.model_dump(exclude_unset=True))
               if name in BUILTIN_POLICIES else policy) for name, policy in parsed.policies.items()}}
    if parsed.default is not None and parsed.default not in known:
        raise PolicyFileError(file, "default", f"found {parsed.default!r}; allowed: {', '.join(sorted(known))}")
    groups = load_groups(parsed.groups)
    for name, policy in known.items():
        unknown = [g for g in policy.approver_groups if g not in groups]
        if unknown:
            raise PolicyFileError(file, f"policies.{name}.approver_groups", f"found {', '.join(map(repr, unknown))}; "
                                  f"defined groups: {', '.join(sorted(groups)) or 'none'} (the file's `groups`, or "
                                  f"{GROUPS_ENV})")
    return _named(known, groups), parsed.default


def load_groups(own: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    """Approver groups: the policy file's own, then the file ``MLPLATFORM_APPROVER_GROUPS`` names (it wins)."""
    groups = {name: tuple(members) for name, members in own.items()}
    configured = os.environ.get(GROUPS_ENV, "").strip()
    if not configured:
        return groups
    file = Path(configured).expanduser()
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise PolicyFileError(file, GROUPS_ENV, f"cannot be read: {error}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise PolicyFileError(file, "(yaml)", f"not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise PolicyFileError(file, "(top level)", "expected a mapping of group -> list of member names")
    for name, members in raw.items():
        if not isinstance(members, list) or not all(isinstance(m, str) and m.strip() for m in members):
            raise PolicyFileError(file, str(name), "expected a list of member names")
        groups[str(name)] = tuple(members)
    return groups


def _named(policies: dict[str, Policy], groups: dict[str, tuple[str, ...]]) -> dict[str, Policy]:
    """Copies that know their own name and their approver groups' members (for approvals and their refusals)."""
    named = {}
    for name, policy in policies.items():
        copy = policy.model_copy()
        copy._name = name
        copy._members = {g: groups.get(g, ()) for g in policy.approver_groups}
        named[name] = copy
    return named


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
    elif policy.required_approvals > 1 and spec.rollout.approval != "manual":
        yield "rollout.approval", (f"found {spec.rollout.approval!r}; {under} requires {policy.required_approvals} "
                                   "distinct approvers, so 'manual'")
    if policy.require_training_data_gate and not spec.gates.training_data.enabled:
        yield "gates.training_data.enabled", f"found false; {under} requires the training-data gate: remove the key"
    if policy.require_live_fairness and spec.fairness is None:
        yield "fairness", (f"missing; {under} requires live fairness: add a fairness section with the sensitive "
                           "columns the requests carry")
    if policy.require_live_fairness and not (spec.rollout.shadow or spec.rollout.canary_percent > 0):
        yield "rollout.shadow", (f"found false with rollout.canary_percent 0; {under} requires live fairness, which "
                                 "needs live traffic for a new version: set rollout.shadow: true or a canary share")
    yield from _canary_share_problems(spec, policy.min_canary_percent, under)


def _canary_share_problems(spec: ModelSpec, minimum: int | None, under: str) -> Iterable[tuple[str, str]]:
    """A policy's minimum canary share: the share a new version starts at (the ramp's first step, else
    ``canary_percent``) at least ``minimum``, and no ``approval: auto`` that makes it champion without a canary."""
    if not minimum:
        return
    rollout = spec.rollout
    if rollout.ramp and rollout.ramp[0] < minimum:
        yield "rollout.ramp", (f"found {rollout.ramp} (a new version starts at {rollout.ramp[0]}%); {under} requires "
                               f"a canary share of at least {minimum}%: make the ramp's first step {minimum} or more")
    elif not rollout.ramp and rollout.canary_percent < minimum:
        yield "rollout.canary_percent", (f"found {rollout.canary_percent}; {under} requires at least {minimum} (a "
                                         f"new version meets live traffic first): set rollout.canary_percent: "
                                         f"{minimum} or more")
    if rollout.approval == "auto" and rollout.auto_promote == "immediate":
        yield "rollout.auto_promote", (f"found 'immediate' with rollout.approval 'auto' (a new version becomes "
                                       f"champion at once, without canary traffic); {under} requires a canary share "
                                       f"of at least {minimum}%: set rollout.auto_promote: canary")
