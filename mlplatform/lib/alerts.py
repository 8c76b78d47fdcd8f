"""Alerts that reach people: lifecycle events of the audit trail, routed to webhooks, Slack and e-mail, once each.

The audit trail (``audit.events``) is the one source of truth: every event that needs a person (a drift alert, a
decayed model and its automatic rollback, halted training, a stopped canary, a version waiting for approval, a failed
retrain) is already an event there, and delivery is a cursor over it. What was sent where is kept in the warehouse
table ``audit.alert_deliveries`` keyed by (destination, alert id): a pass sends what that table does not hold as
delivered, so every event reaches each of its destinations once, and a destination that was down gets the events it
missed on a later pass (retried with exponential backoff). A failed delivery is recorded and retried; it never stops
a run, because runs do not deliver: the ``alerts_delivery`` sensor and ``mlplatform alerts deliver`` do.

Where alerts go is the platform's decision, in the ``alerts`` section of the policy file (``policies.yaml`` beside
the specs or ``MLPLATFORM_POLICIES``): named destinations, and routes that send a team's, a policy's or a model's
alerts to some of them. Secrets (a Slack webhook URL, an SMTP password) come from the environment, never the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mlplatform import names
from mlplatform.specs.alerts_config import (  # noqa: F401 (re-exported: the configuration's names)
    ALERT_KINDS,
    DEFAULT_UI_URL,
    UI_URL_ENV,
    AlertRoute,
    AlertsConfig,
    DeliveryError,
    EmailDestination,
    SlackDestination,
    WebhookDestination,
)

if TYPE_CHECKING:
    import duckdb

    from mlplatform.specs import ModelSpec

DIRECT_KINDS = {"drift_alert": "drift_alert", "performance_alert": "performance_alert", "rollback": "rollback",
                "training_halted": "training_halted", "canary_stopped": "canary_stopped",
                "retrain_failed": "retrain_failed", "approval_pending": "approval_waiting",
                "approval_refused": "approval_refused", "promotion_refused": "approval_refused"}
"""Audit event -> alert kind, for the events that are an alert whatever they hold. ``alias_change`` is one only when
it makes a version challenger under manual approval (:func:`alert_kind`); ``approval_pending`` is the first of two
approvals that a policy requires; ``promotion_refused`` is a promotion live fairness held back."""

ALERTING_EVENTS = (*DIRECT_KINDS, "alias_change")

DELIVERIES_TABLE = f"{names.AUDIT_SCHEMA}.alert_deliveries"
DELIVERIES_DDL = f"""
create schema if not exists {names.AUDIT_SCHEMA};
create table if not exists {DELIVERIES_TABLE} (
    destination varchar, alert_id varchar, model varchar, seq bigint, kind varchar, event_at timestamp,
    status varchar, attempts integer, first_attempt_at timestamp, last_attempt_at timestamp,
    next_attempt_at timestamp, delivered_at timestamp, last_error varchar,
    primary key (destination, alert_id)
)
"""
DELIVERED, FAILED, SENDING = "delivered", "failed", "sending"
CLAIM_SECONDS = 300.0
"""How long a pass holds the alerts it is sending: a second pass (the CLI beside the sensor) leaves them alone."""


def ui_url(config: AlertsConfig, environ: dict[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return (config.ui_url or environ.get(UI_URL_ENV, "").strip() or DEFAULT_UI_URL).rstrip("/")


def team_of(spec: ModelSpec) -> str | None:
    """The model's team: ``team`` when the spec has one, else its ``owner`` (``team:fraud`` -> ``fraud``)."""
    team = getattr(spec, "team", None) or spec.owner
    return _team_name(team) if team else None


def _team_name(text: str) -> str:
    return str(text).strip().removeprefix("team:").strip()


@dataclass(frozen=True)
class ModelRouting:
    """What routing needs of one model: its name, team, policy and approval mode."""

    model: str
    team: str | None
    policy: str | None
    manual_approval: bool

    @classmethod
    def of(cls, spec: ModelSpec, default_policy: str | None = None) -> ModelRouting:
        return cls(spec.name, team_of(spec), spec.policy or default_policy, spec.rollout.approval == "manual")


def destinations_for(config: AlertsConfig, model: ModelRouting, kind: str) -> list[str]:
    """The destinations an alert of ``kind`` about ``model`` goes to, each once, in the file's order."""
    found: list[str] = []
    for route in config.routes:
        if route.teams and (model.team is None or model.team not in {_team_name(t) for t in route.teams}):
            continue
        if route.policies and model.policy not in route.policies:
            continue
        if route.models and model.model not in route.models:
            continue
        if route.kinds and kind not in route.kinds:
            continue
        found += [d for d in route.destinations if d not in found]
    return found


@dataclass(frozen=True)
class AlertSetup:
    """The alerts configuration and the models it routes for (one code location's, or the CLI's)."""

    config: AlertsConfig
    models: dict[str, ModelRouting]
    file: Path | None = None

    def routed_models(self, kind: str | None = None) -> list[str]:
        return [m for m, routing in self.models.items()
                if any(destinations_for(self.config, routing, k) for k in ([kind] if kind else ALERT_KINDS))]


def load_alerts_config(file: Path | None) -> AlertsConfig:
    """The ``alerts`` section of the policy file (none: nothing is routed). Raises ``PolicyFileError`` naming the key."""
    from pydantic import ValidationError

    from mlplatform.specs.policies import PolicyFileError

    if file is None:
        return AlertsConfig()
    import yaml

    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise PolicyFileError(file, "alerts", f"cannot be read: {error}") from None
    section = raw.get("alerts") if isinstance(raw, dict) else None
    try:
        return AlertsConfig.model_validate(section or {})
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(["alerts", *(str(p) for p in first["loc"])])
        raise PolicyFileError(file, key, f"{first['msg']} (docs/alerts.md)") from None


def alert_setup(specs: Iterable[ModelSpec], spec_roots: Path | Sequence[Path]) -> AlertSetup:
    """The alerts configuration of the policy file of every spec root (``MLPLATFORM_SPECS=a:b``, or
    ``MLPLATFORM_POLICIES`` for all of them) and how each spec routes (with its root's default policy).

    Several files: their destinations are pooled (one name defined differently in two files is refused, naming
    both) and each file's routes route only the models of its own roots; ``ui_url`` and the retry settings are the
    first configured file's."""
    from mlplatform.specs.policies import load_policies, policies_path

    roots = [Path(spec_roots)] if isinstance(spec_roots, (str, Path)) else [Path(r) for r in spec_roots]
    files: dict[Path | None, list[Path]] = {}
    for root in roots:
        files.setdefault(policies_path(root), []).append(root)
    defaults = {file: load_policies(file)[1] for file in files}
    routing: dict[str, ModelRouting] = {}
    models_of: dict[Path | None, list[str]] = {file: [] for file in files}
    for spec in specs:
        file = _policy_file_of(spec, files)
        routing[spec.name] = ModelRouting.of(spec, defaults.get(file))
        models_of.setdefault(file, []).append(spec.name)
    configs = [(file, load_alerts_config(file)) for file in files]
    configured = [(file, config) for file, config in configs if config.configured]
    if len(configs) == 1 or len(configured) <= 1:
        file, config = configured[0] if configured else configs[0]
        if len(configs) > 1 and configured:  # one file routes: only the models of its own roots
            config = config.model_copy(update={"routes": _routes_for(config.routes, models_of.get(file, []))})
        return AlertSetup(config, routing, file)
    return AlertSetup(_pooled(configured, models_of), routing, configured[0][0])


def _policy_file_of(spec: ModelSpec, files: dict[Path | None, list[Path]]) -> Path | None:
    """The policy file of the spec root holding ``spec`` (the deepest root that contains its file)."""
    spec_file = Path(spec.spec_file).resolve()
    best, depth = next(iter(files)), -1
    for file, roots in files.items():
        for root in roots:
            resolved = root.resolve()
            if spec_file.is_relative_to(resolved) and len(resolved.parts) > depth:
                best, depth = file, len(resolved.parts)
    return best


def _routes_for(routes: list[AlertRoute], models: list[str]) -> list[AlertRoute]:
    """``routes`` narrowed to ``models`` (a route naming none of them is dropped)."""
    narrowed = []
    for route in routes:
        chosen = [m for m in (route.models or models) if m in models]
        if chosen:
            narrowed.append(route.model_copy(update={"models": chosen}))
    return narrowed


def _pooled(configured: list[tuple[Path | None, AlertsConfig]], models_of: dict[Path | None, list[str]]
            ) -> AlertsConfig:
    """One configuration from several policy files' (see :func:`alert_setup`)."""
    from mlplatform.specs.policies import PolicyFileError

    first = configured[0][1]
    destinations: dict[str, Any] = {}
    defined_in: dict[str, Path | None] = {}
    routes: list[AlertRoute] = []
    for file, config in configured:
        for name, destination in config.destinations.items():
            if name in destinations and destinations[name] != destination:
                raise PolicyFileError(file, f"alerts.destinations.{name}", (
                    f"{name!r} is also defined, differently, in {defined_in[name]}; destination names are shared by "
                    "every spec root's policy file: rename one, or define it identically"))
            destinations.setdefault(name, destination)
            defined_in.setdefault(name, file)
        routes += _routes_for(config.routes, models_of.get(file, []))
    return first.model_copy(update={"destinations": destinations, "routes": routes})


# --- Alerts: what an audit event tells a person ------------------------------------------------------------------

@dataclass
class Alert:
    """One alert: the facts of its event and where to look in the UI."""

    id: str  # "<model>#<seq>" (an audit event) or "<model>#verify-<digest>" (a verification that failed)
    model: str
    kind: str
    title: str
    summary: str
    occurred_at: datetime
    seq: int | None = None
    event: str | None = None
    actor: str | None = None
    version: str | None = None
    week: str | None = None
    passed: bool | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # the event's details: its numbers and names
    link: str = ""
    run_link: str | None = None
    team: str | None = None
    policy: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "title": self.title, "model": self.model, "team": self.team,
                "policy": self.policy, "summary": self.summary, "week": self.week, "version": self.version,
                "passed": self.passed, "actor": self.actor, "event": self.event, "seq": self.seq,
                "occurred_at": self.occurred_at.isoformat(timespec="seconds") + "Z", "facts": _finite(self.facts),
                "link": self.link, "run_link": self.run_link, "source": "mlplatform"}


def _finite(value: Any) -> Any:
    """JSON a strict receiver parses: NaN and infinities (a metric not measured) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


ASSET_OF_KIND = {"drift_alert": names.DRIFT, "performance_alert": names.LIVE_PERFORMANCE, "rollback": names.MODEL,
                 "training_halted": names.MODEL, "canary_stopped": names.LIVE_PERFORMANCE,
                 "approval_waiting": names.MODEL, "approval_refused": names.AUDIT_TRAIL, "retrain_failed": names.MODEL,
                 "audit_verification_failed": names.AUDIT_TRAIL}
"""The asset an alert links to in the Dagster UI."""


def alert_kind(event: str, details: dict[str, Any], routing: ModelRouting | None) -> str | None:
    """The alert an audit event is, or None. A version made challenger waits for a person only under manual
    approval (under ``auto`` the same gates made it champion too)."""
    if event in DIRECT_KINDS:
        return DIRECT_KINDS[event]
    if event == "alias_change" and details.get("alias") == "challenger" and details.get("action", "set") == "set":
        return "approval_waiting" if routing is None or routing.manual_approval else None
    return None


def asset_link(base: str, model: str, kind: str, week: str | None) -> str:
    stage = ASSET_OF_KIND.get(kind, names.AUDIT_TRAIL)
    link = f"{base}/assets/{'/'.join(names.asset_path(model, stage))}"
    if week and stage != names.AUDIT_TRAIL:
        link += f"?view=partitions&partition={str(week)[:10]}"
    return link


def _title(kind: str, model: str, version: str | None, week: str | None, actor: str | None,
           facts: dict[str, Any], event: str | None = None) -> str:
    on_week = f" on week {str(week)[:10]}" if week else ""
    if kind == "drift_alert":
        return f"{model}: input drift{on_week}"
    if kind == "performance_alert":
        return f"{model}: live performance of v{version or '?'} degraded{on_week}"
    if kind == "rollback":
        how = "automatically " if actor and actor.startswith("sensor") else ""
        return f"{model}: champion {how}rolled back from v{facts.get('previous_version') or '?'} to v{version or '?'}"
    if kind == "training_halted":
        return f"{model}: training halted{on_week}"
    if kind == "canary_stopped":
        return f"{model}: canary v{facts.get('previous_version') or version or '?'} stopped"
    if kind == "approval_waiting" and event == "approval_pending":
        return f"{model}: v{version or '?'} approved by {actor or '?'}, waits for another approver"
    if kind == "approval_waiting":
        return f"{model}: v{version or '?'} waits for approval"
    if kind == "approval_refused" and event == "promotion_refused":
        return f"{model}: promotion of v{version or '?'} refused (live fairness)"
    if kind == "approval_refused":
        return f"{model}: a promotion or rollback by {actor or '?'} was refused"
    if kind == "retrain_failed":
        return f"{model}: retrain failed{on_week}"
    if kind == "audit_verification_failed":
        return f"{model}: audit trail verification FAILED"
    return f"{model}: {kind}"


def _clean(value: Any) -> Any:
    try:
        if value is None or pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def alerts_from_events(rows: pd.DataFrame, setup: AlertSetup, base_url: str) -> list[Alert]:
    """The alerts among audit event rows (``audit.events`` columns), in trail order."""
    found = []
    for record in rows.to_dict("records"):
        model = str(record["model"])
        routing = setup.models.get(model)
        try:
            details = json.loads(record.get("details") or "{}")
        except (TypeError, ValueError):
            details = {}
        details = details if isinstance(details, dict) else {"details": details}
        kind = alert_kind(str(record["event"]), details, routing)
        if kind is None:
            continue
        version, week, actor = _clean(record.get("version")), _clean(record.get("week")), _clean(record.get("actor"))
        run_id = _clean(record.get("dagster_run_id"))
        passed = _clean(record.get("passed"))
        found.append(Alert(
            id=f"{model}#{int(record['seq'])}", model=model, kind=kind,
            title=_title(kind, model, version, week, actor, details, str(record["event"])),
            summary=str(record.get("summary") or ""),
            occurred_at=pd.Timestamp(record["occurred_at"]).to_pydatetime(), seq=int(record["seq"]),
            event=str(record["event"]), actor=actor, version=version, week=week,
            passed=None if passed is None else bool(passed), facts=details,
            link=asset_link(base_url, model, kind, week), run_link=f"{base_url}/runs/{run_id}" if run_id else None,
            team=routing.team if routing else None, policy=routing.policy if routing else None))
    return found


def verification_alert(model: str, problems: list[str], setup: AlertSetup, base_url: str, now: datetime) -> Alert:
    """A trail whose chain does not verify: one alert per distinct set of problems (a new break alerts again)."""
    digest = hashlib.sha256("\n".join(sorted(problems)).encode()).hexdigest()[:16]
    routing = setup.models.get(model)
    return Alert(id=f"{model}#verify-{digest}", model=model, kind="audit_verification_failed",
                 title=_title("audit_verification_failed", model, None, None, None, {}),
                 summary=f"{len(problems)} problem(s): " + "; ".join(problems[:5]), occurred_at=now,
                 passed=False, facts={"problems": problems}, link=asset_link(base_url, model,
                                                                             "audit_verification_failed", None),
                 team=routing.team if routing else None, policy=routing.policy if routing else None)


def sample_alert(destination: str, base_url: str, now: datetime) -> Alert:
    """What ``mlplatform alerts test`` sends: a harmless alert that says where it came from."""
    return Alert(id=f"test#{now:%Y%m%dT%H%M%S}", model="(test)", kind="test", title="mlplatform: test alert",
                 summary=f"A test of the destination {destination!r}: if you read this, alerts reach you.",
                 occurred_at=now, facts={"destination": destination}, link=base_url)


# --- Formats and senders ------------------------------------------------------------------------------------------

def webhook_payload(alert: Alert) -> dict[str, Any]:
    return alert.as_dict()


def _facts_text(alert: Alert) -> list[str]:
    return [f"{key}: {json.dumps(value, default=str) if isinstance(value, dict | list) else value}"
            for key, value in _finite(alert.facts).items()]


def slack_payload(alert: Alert, blocks: bool = True) -> dict[str, Any]:
    """Slack's incoming-webhook body: ``text`` (what every compatible receiver shows) and optional blocks."""
    where = " · ".join(x for x in (f"week {str(alert.week)[:10]}" if alert.week else "",
                                   f"v{alert.version}" if alert.version else "",
                                   f"team {alert.team}" if alert.team else "") if x)
    text = f"*{alert.title}*\n{alert.summary}" + (f"\n{where}" if where else "") + f"\n<{alert.link}|Open in Dagster>"
    payload: dict[str, Any] = {"text": text}
    if blocks:
        facts = "\n".join(_facts_text(alert))[:2900]
        payload["blocks"] = [
            {"type": "header", "text": {"type": "plain_text", "text": alert.title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": alert.summary[:2900] or "-"}},
            *([{"type": "section", "text": {"type": "mrkdwn", "text": f"```{facts}```"}}] if facts else []),
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{alert.kind} · {where or alert.model} · "
                                              f"<{alert.link}|Open in Dagster> · id {alert.id}"}]},
        ]
    return payload


def email_message(alert: Alert, destination: EmailDestination):
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    message = EmailMessage()
    message["Subject"] = f"[mlplatform] {alert.title}"
    message["From"] = destination.sender
    message["To"] = ", ".join(destination.to)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid("mlplatform-alert")
    message["X-Mlplatform-Alert-Id"] = alert.id
    lines = [alert.title, "", alert.summary, "", f"model: {alert.model}", f"kind: {alert.kind}",
             *([f"team: {alert.team}"] if alert.team else []), *([f"policy: {alert.policy}"] if alert.policy else []),
             *([f"week: {alert.week}"] if alert.week else []), *([f"version: {alert.version}"] if alert.version else []),
             *([f"by: {alert.actor}"] if alert.actor else []), f"at: {alert.occurred_at:%Y-%m-%d %H:%M:%S} UTC",
             *_facts_text(alert), "", f"Open in Dagster: {alert.link}",
             *([f"The run: {alert.run_link}"] if alert.run_link else []), f"Alert id: {alert.id}"]
    message.set_content("\n".join(lines))
    return message


def _post_json(url: str, payload: dict[str, Any], timeout: float, alert_id: str) -> None:
    import urllib.error
    import urllib.request

    body = json.dumps(_finite(payload), default=str, allow_nan=False).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "mlplatform-alerts", "Idempotency-Key": alert_id})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http/https checked at load)
            response.read()
    except urllib.error.HTTPError as error:
        raise DeliveryError(f"{url} answered {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise DeliveryError(f"{url} unreachable: {getattr(error, 'reason', error)}") from None


def _send_email(alert: Alert, destination: EmailDestination, environ: dict[str, str]) -> None:
    import smtplib

    user = environ.get(destination.username_env or "", "") if destination.username_env else ""
    password = environ.get(destination.password_env or "", "") if destination.password_env else ""
    if destination.username_env and not user:
        raise DeliveryError(f"the environment variable {destination.username_env} (username_env) is not set")
    try:
        with smtplib.SMTP(destination.host, destination.port, timeout=destination.timeout_seconds) as smtp:
            if destination.starttls:
                smtp.starttls()
            if user:
                smtp.login(user, password)
            smtp.send_message(email_message(alert, destination))
    except (smtplib.SMTPException, OSError) as error:
        raise DeliveryError(f"SMTP {destination.host}:{destination.port}: {type(error).__name__}: {error}") from None


def send(alert: Alert, destination: WebhookDestination | SlackDestination | EmailDestination,
         environ: dict[str, str] | None = None) -> None:
    """Deliver one alert to one destination; raises :class:`DeliveryError` saying why it did not arrive."""
    environ = dict(os.environ) if environ is None else environ
    if isinstance(destination, EmailDestination):
        _send_email(alert, destination, environ)
    elif isinstance(destination, SlackDestination):
        _post_json(destination.endpoint(environ), slack_payload(alert, destination.blocks),
                   destination.timeout_seconds, alert.id)
    else:
        _post_json(destination.endpoint(environ), webhook_payload(alert), destination.timeout_seconds, alert.id)


# --- Retrain failures: recorded in the trail, so they alert like every other event -------------------------------

@dataclass(frozen=True)
class FailedRun:
    """A failed Dagster run of a model's retrain job (what the sensor reads from the instance)."""

    run_id: str
    model: str
    job_name: str
    failed_at: datetime
    message: str
    trigger: str | None = None
    week: str | None = None


def record_retrain_failures(connection: duckdb.DuckDBPyConnection, failures: Sequence[FailedRun]) -> int:
    """Append a ``retrain_failed`` audit event for each failed run not recorded yet (keyed by its run id)."""
    from mlplatform.lib.audit import EVENTS_DDL, EVENTS_TABLE, AuditEvent, append_events

    if not failures:
        return 0
    connection.execute(EVENTS_DDL)
    known = {row[0] for row in connection.execute(
        f"select dagster_run_id from {EVENTS_TABLE} where event = 'retrain_failed' and dagster_run_id in "
        "(select unnest(?))", [[f.run_id for f in failures]]).fetchall()}
    new = [f for f in failures if f.run_id not in known]
    return append_events(connection, [AuditEvent(
        f.model, "retrain_failed", f"dagster run {f.run_id}",
        f"run {f.run_id[:8]} of {f.job_name} failed" + (f" (requested by {f.trigger})" if f.trigger else "")
        + f": {f.message}"[:500], week=f.week, passed=False, dagster_run_id=f.run_id,
        details={"job": f.job_name, "trigger": f.trigger, "error": f.message[:1000]}, at=f.failed_at) for f in new])


# --- Delivery: a cursor over the trail, kept per destination in the warehouse ------------------------------------

@dataclass
class Outcome:
    destination: str
    alert: Alert
    delivered: bool
    attempts: int
    error: str | None = None
    next_attempt_at: datetime | None = None
    tried: bool = True

    def line(self) -> str:
        if self.delivered:
            return f"delivered {self.alert.id} ({self.alert.kind}) to {self.destination}"
        retry = f"; retry after {self.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC" if self.next_attempt_at else ""
        return (f"{'FAILED' if self.tried else 'deferred'} {self.alert.id} ({self.alert.kind}) to {self.destination} "
                f"(attempt {self.attempts}): {self.error}{retry}")


@dataclass
class PassReport:
    """What one delivery pass did."""

    outcomes: list[Outcome] = field(default_factory=list)
    recorded_failures: int = 0
    verified: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def delivered(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.delivered]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.delivered]

    def text(self) -> str:
        if self.note:
            return self.note
        if not self.outcomes:
            return "no new alerts"
        return f"{len(self.delivered)} delivered, {len(self.failed)} not delivered (retried later)"


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def backoff(config: AlertsConfig, attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: ``retry_seconds`` doubled per failure, at most ``max_retry_seconds``."""
    return min(config.retry_seconds * 2 ** max(attempts - 1, 0), config.max_retry_seconds)


def _table_exists(connection: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(connection.execute("select count(*) from information_schema.tables where table_schema = ? and "
                                   "table_name = ?", [schema, table]).fetchall()[0][0])


AnchorsOf = Callable[[str], tuple[str | None, str | None, bool]]
"""model -> (registry tag, checkpoint text, registered): the trail's anchors (lib/audit_integrity.anchor_reader)."""

_LAST_VERIFIED: dict[tuple[str, str], tuple[tuple, list[str]]] = {}
"""(warehouse, model) -> (what was verified, its problems): an unchanged trail with unchanged anchors is not
verified again by this process (a sensor tick every few minutes stays cheap)."""


def trail_problems(connection: duckdb.DuckDBPyConnection, model: str,
                   anchors: tuple[str | None, str | None, bool] | None = None) -> list[str]:
    """Why ``model``'s trail does not verify (empty: it does). With ``anchors``: the check ``mlplatform audit MODEL
    --verify`` runs (the keyed chain, its head against the registry tag and the checkpoint, audit.alias_changes), so
    deleted newest events or a deleted trail are caught; a model with neither a trail nor an anchor never ran."""
    from mlplatform.lib.audit import read_events, verify_chain

    if anchors is None:
        return verify_chain(read_events(connection, model))
    from mlplatform.lib.audit_integrity import read_alias_rows, verify_trail, warehouse_home
    from mlplatform.lib.audit_key import AuditKeyError, configured_key

    registry, checkpoint, registered = anchors
    state = (_trail_fingerprint(connection, model), registry, checkpoint, registered)
    cache_key = (str(warehouse_home(connection)), model)
    cached = _LAST_VERIFIED.get(cache_key)
    if cached is not None and cached[0] == state:
        return cached[1]
    events = read_events(connection, model)
    if events.empty and registry is None and checkpoint is None:
        problems: list[str] = []
    else:
        try:
            key = configured_key()
        except AuditKeyError as error:
            return [f"not verified: {error}"]
        problems = verify_trail(model, events, read_alias_rows(connection, model), registry, checkpoint, registered,
                                [], key).problems
    _LAST_VERIFIED[cache_key] = (state, problems)
    return problems


def _trail_fingerprint(connection: duckdb.DuckDBPyConnection, model: str) -> tuple:
    """The model's events and alias changes, summed up (count, newest seq, a hash over every row): cheap to compute,
    different after any edit, deletion or addition."""
    from mlplatform.lib.audit import AUDIT_TABLE, EVENTS_TABLE

    found = [connection.execute(f"select count(*), max(seq), sum(hash(e::varchar)) from {EVENTS_TABLE} e "
                                "where model = ?", [model]).fetchall()[0]]
    if _table_exists(connection, names.AUDIT_SCHEMA, "alias_changes"):
        found.append(connection.execute(f"select count(*), sum(hash(a::varchar)) from {AUDIT_TABLE} a where "
                                        "model = ?", [model]).fetchall()[0])
    return tuple(found)


def pending_alerts(connection: duckdb.DuckDBPyConnection, setup: AlertSetup, now: datetime,
                   verify: bool = True, anchors: dict[str, tuple[str | None, str | None, bool]] | None = None
                   ) -> list[Alert]:
    """Every alert of the routed models within ``max_age_hours`` (delivered or not), and a failed verification's
    (``anchors``, per model: the anchored check of ``audit --verify``; None: the chain alone)."""
    from mlplatform.lib.audit import EVENTS_TABLE

    models = setup.routed_models()
    if not models or not _table_exists(connection, names.AUDIT_SCHEMA, names.AUDIT_EVENTS_TABLE):
        return []
    base = ui_url(setup.config)
    cutoff = now - timedelta(hours=setup.config.max_age_hours)
    rows = connection.execute(
        f"select * from {EVENTS_TABLE} where event in (select unnest(?)) and model in (select unnest(?)) "
        "and occurred_at >= ? order by model, seq", [list(ALERTING_EVENTS), models, cutoff]).fetchdf()
    alerts = alerts_from_events(rows, setup, base)
    if verify and anchors is not None:  # every routed model: a deleted trail has no events, but anchors
        for model in sorted(setup.routed_models("audit_verification_failed")):
            problems = trail_problems(connection, model, anchors.get(model, (None, None, False)))
            if problems:
                alerts.append(verification_alert(model, problems, setup, base, now))
    elif verify:
        with_trails = {row[0] for row in connection.execute(
            f"select distinct model from {EVENTS_TABLE} where model in (select unnest(?))",
            [setup.routed_models("audit_verification_failed")]).fetchall()}
        for model in sorted(with_trails):
            problems = trail_problems(connection, model)
            if problems:
                alerts.append(verification_alert(model, problems, setup, base, now))
    return alerts


def _due(connection: duckdb.DuckDBPyConnection, setup: AlertSetup, alerts: list[Alert], now: datetime,
         limit: int) -> list[tuple[Alert, str, int]]:
    """(alert, destination, attempts so far) not delivered yet and not waiting for a retry or another pass."""
    if not alerts:
        return []
    cutoff = now - timedelta(hours=setup.config.max_age_hours + 24)
    known = {(d, a): (status, attempts, next_at) for d, a, status, attempts, next_at in connection.execute(
        f"select destination, alert_id, status, attempts, next_attempt_at from {DELIVERIES_TABLE} "
        "where event_at >= ? or status != ?", [cutoff, DELIVERED]).fetchall()}
    due = []
    for alert in alerts:
        routing = setup.models.get(alert.model)
        if routing is None:
            continue
        for destination in destinations_for(setup.config, routing, alert.kind):
            status, attempts, next_at = known.get((destination, alert.id), (None, 0, None))
            if status == DELIVERED or (next_at is not None and next_at > now):
                continue
            due.append((alert, destination, int(attempts or 0)))
            if len(due) >= limit:
                return due
    return due


def _upsert(connection: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = ["destination", "alert_id", "model", "seq", "kind", "event_at", "status", "attempts",
               "first_attempt_at", "last_attempt_at", "next_attempt_at", "delivered_at", "last_error"]
    frame = pd.DataFrame(rows, columns=columns).astype({
        "seq": "Int64", "attempts": "int32", "event_at": "datetime64[us]", "first_attempt_at": "datetime64[us]",
        "last_attempt_at": "datetime64[us]", "next_attempt_at": "datetime64[us]", "delivered_at": "datetime64[us]"})
    connection.register("delivery_rows", frame)
    try:
        connection.execute(
            f"insert into {DELIVERIES_TABLE} by name select * from delivery_rows on conflict (destination, alert_id) "
            "do update set status = excluded.status, attempts = excluded.attempts, "
            f"first_attempt_at = coalesce({DELIVERIES_TABLE}.first_attempt_at, excluded.first_attempt_at), "
            f"last_attempt_at = coalesce(excluded.last_attempt_at, {DELIVERIES_TABLE}.last_attempt_at), "
            "next_attempt_at = excluded.next_attempt_at, "
            "delivered_at = excluded.delivered_at, last_error = excluded.last_error")
    finally:
        connection.unregister("delivery_rows")


def _row(alert: Alert, destination: str, status: str, attempts: int, now: datetime, next_at: datetime | None,
         delivered_at: datetime | None = None, error: str | None = None, attempted: bool = True) -> dict[str, Any]:
    return {"destination": destination, "alert_id": alert.id, "model": alert.model, "seq": alert.seq,
            "kind": alert.kind, "event_at": alert.occurred_at, "status": status, "attempts": attempts,
            "first_attempt_at": now if attempted else None, "last_attempt_at": now if attempted else None,
            "next_attempt_at": next_at, "delivered_at": delivered_at, "last_error": error}


Connect = Callable[[float], Any]
"""Opens the warehouse read-write, waiting at most the given seconds for its lock (a DuckDB connection, used as a
context manager: closed after each use); held briefly, twice a pass."""


def deliver(connect: Connect, setup: AlertSetup, now: datetime | None = None, verify: bool = True,
            failures: Sequence[FailedRun] = (), environ: dict[str, str] | None = None,
            sender: Callable[..., None] = send, limit: int = 200, budget_seconds: float = 30.0,
            read_wait: float = 2.0, record_wait: float = 20.0, anchors_of: AnchorsOf | None = None) -> PassReport:
    """One delivery pass: record new retrain failures, then send every due alert to each of its destinations.

    The warehouse is held only to read what is due and claim it, and again to record the outcomes; never while
    sending. A destination that fails is not tried again in this pass (its other alerts wait for the same retry).
    The read gives up after ``read_wait`` seconds of a busy warehouse (``WarehouseBusy``: nothing was sent); the
    record waits up to ``record_wait`` (what was sent is claimed for ``CLAIM_SECONDS`` either way).
    """
    now = now or utc_now()
    report = PassReport()
    if not setup.config.configured or not setup.routed_models():
        report.note = "no alert routes for these models (alerts section of the policy file, docs/alerts.md)"
        return report
    anchors = None
    if verify and anchors_of is not None:  # read before the trail: a head anchored meanwhile is in the trail too
        anchors = {model: anchors_of(model) for model in setup.routed_models("audit_verification_failed")}
    with connect(read_wait) as connection:
        if failures:
            report.recorded_failures = record_retrain_failures(connection, failures)
        connection.execute(DELIVERIES_DDL)
        alerts = pending_alerts(connection, setup, now, verify, anchors)
        due = _due(connection, setup, alerts, now, limit)
        claim_until = now + timedelta(seconds=CLAIM_SECONDS)
        _upsert(connection, [_row(a, d, SENDING, n, now, claim_until, attempted=False) for a, d, n in due])
    if verify:
        report.verified = setup.routed_models("audit_verification_failed")
    if not due:
        return report
    started = time.monotonic()
    down: dict[str, tuple[str, datetime]] = {}  # destination -> (error, retry time) after its first failure here
    failures_so_far: dict[str, int] = {}  # per destination: the most attempts of an alert due to it (its backoff)
    for _, name, attempts in due:
        failures_so_far[name] = max(failures_so_far.get(name, 0), attempts)
    rows = []
    for alert, name, attempts in due:
        if name in down or time.monotonic() - started > budget_seconds:
            error, next_at = down.get(name, ("not tried: the pass ran out of time", now))
            report.outcomes.append(Outcome(name, alert, False, attempts, error, next_at, tried=False))
            rows.append(_row(alert, name, FAILED, attempts, now, next_at, error=error, attempted=False))
            continue
        try:
            sender(alert, setup.config.destinations[name], environ)
        except Exception as error:  # noqa: BLE001 (any failure of a destination is recorded, never raised)
            text = str(error) if isinstance(error, DeliveryError) else f"{type(error).__name__}: {error}"
            next_at = now + timedelta(seconds=backoff(setup.config, failures_so_far[name] + 1))
            down[name] = (f"not tried: {name} failed earlier in this pass ({text})", next_at)
            report.outcomes.append(Outcome(name, alert, False, attempts + 1, text, next_at))
            rows.append(_row(alert, name, FAILED, attempts + 1, now, next_at, error=text[:1000]))
            continue
        report.outcomes.append(Outcome(name, alert, True, attempts + 1))
        rows.append(_row(alert, name, DELIVERED, attempts + 1, now, None, delivered_at=utc_now()))
    with connect(record_wait) as connection:
        _upsert(connection, rows)
    return report


def deliveries(connection: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """``audit.alert_deliveries`` (empty when nothing was ever delivered)."""
    if not _table_exists(connection, names.AUDIT_SCHEMA, "alert_deliveries"):
        return pd.DataFrame(columns=["destination", "alert_id", "model", "seq", "kind", "status", "attempts"])
    return connection.execute(f"select * from {DELIVERIES_TABLE} order by destination, model, seq").fetchdf()
