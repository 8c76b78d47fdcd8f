"""The demo's production: serve every champion, send weeks of traffic, bring in their outcomes, and let the platform act.

Used by ``mlplatform demo`` after the pipeline runs, so a newcomer sees the whole path: registry -> REST service ->
prediction log -> labels -> live performance -> rollback and retrain. The service is the real one (``mlplatform
serve`` in a subprocess on a free loopback port), stopped with SIGTERM so it flushes its log; the Dagster runs and
sensor ticks are the real ones, in this process, against the instance in ``DAGSTER_HOME``.

The models in the demo's production plan (:mod:`mlplatform.demo.plan`) kept their last weeks out of the history
run, so the versions serving them never trained on them. Two shapes of production:

- ``replay``: the weeks' rows arrive, their traffic goes through the service, then one production run brings in
  their outcomes and judges live performance;
- ``week_by_week``: each week in turn: traffic, the weekly run (data, drift, live performance), the sensors, and
  the service hot-swapping whatever they decide.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta

import httpx

from mlplatform import names
from mlplatform.demo.plan import PLAN_FILE, ProductionWeeks
from mlplatform.lib.prediction_log import read_prediction_log
from mlplatform.lib.settings import Settings
from mlplatform.specs import ModelSpec

READY_SECONDS = 120.0
SWAP_SECONDS = 60.0


@dataclass
class WeekStory:
    """One production week of a model the demo lives week by week."""

    week: str
    served_by: str | None
    sent: int = 0
    drift_passed: bool | None = None
    live: str = "-"
    evaluation: str = "-"
    degradation_passed: bool | None = None
    actions: list[str] = field(default_factory=list)
    recovery: str = ""  # what the week meant for a recovery from a concept change (lib.recovery), in a sentence


@dataclass
class ProductionSummary:
    model: str
    served: bool
    note: str = ""
    weeks: tuple[str, str] | None = None
    sent: int = 0
    answered: int = 0
    log_rows: dict[tuple[str, str], int] = field(default_factory=dict)  # (version, role) -> rows
    live: list[str] = field(default_factory=list)  # live performance lines of the replayed weeks
    story: list[WeekStory] = field(default_factory=list)
    metric: str = ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """``mlplatform serve`` for some models in a subprocess; stopped with SIGTERM (the log is flushed)."""

    def __init__(self, settings: Settings, models: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = settings.home / "serve-demo.log"
        self.command = [sys.executable, "-m", "mlplatform.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        for model in models:
            self.command += ["--model", model]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Service:
        with self.log_file.open("w") as output:
            self.process = subprocess.Popen(self.command, stdout=output, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # the service flushes its prediction log on SIGTERM
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service stopped before it was ready; its log: {self.log_file}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the service was not ready after {READY_SECONDS:g} s; its log: {self.log_file}")

    def champion(self, model: str) -> str | None:
        """The version the service answers with as champion now."""
        for described in httpx.get(f"{self.url}/v1/models", timeout=10).json()["models"]:
            if described["name"] == model:
                return (described.get("champion") or {}).get("version")
        return None

    def wait_for_champion(self, model: str, version: str | None) -> None:
        """Until the service has hot-swapped to ``version`` (it polls the registry every few seconds)."""
        deadline = time.monotonic() + SWAP_SECONDS
        while self.champion(model) != version:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service still serves {model} v{self.champion(model)}, not v{version}, after "
                                   f"{SWAP_SECONDS:g} s; its log: {self.log_file}")
            time.sleep(0.25)


def live_weeks(spec: ModelSpec, last_run_week: str, count: int) -> list[str]:
    """The ``count`` weeks after the pipeline's last week, within the model's partitions."""
    weeks = [(date.fromisoformat(last_run_week) + timedelta(weeks=i)).isoformat() for i in range(1, count + 1)]
    end = spec.partitions.end
    return [w for w in weeks if end is None or date.fromisoformat(w) < end]


def run_production(settings: Settings, specs: list[ModelSpec], champions: dict[str, str | None],
                   last_weeks: dict[str, str], plan: dict[str, ProductionWeeks]) -> list[ProductionSummary]:
    """Serve the models of ``plan`` that have a champion; live their planned weeks after ``last_weeks`` (the last
    week their history ran) in the planned shape; summarise what happened."""
    from dagster import DagsterInstance

    from mlplatform.definitions import build_definitions

    summaries = {spec.name: ProductionSummary(spec.name, served=bool(champions.get(spec.name)),
                                              metric=spec.primary_metric) for spec in specs}
    for summary in summaries.values():
        if summary.model not in plan:
            summary.served, summary.note = False, f"not in the demo's production plan ({PLAN_FILE})"
        elif not summary.served:
            summary.note = "not served: no champion yet"
    served = [spec for spec in specs if summaries[spec.name].served and spec.name in last_weeks]
    if not served:
        return list(summaries.values())
    defs, instance = build_definitions(), DagsterInstance.get()
    with Service(settings, [spec.name for spec in served]) as service:
        for spec in served:
            summary = summaries[spec.name]
            weeks = live_weeks(spec, last_weeks[spec.name], plan[spec.name].weeks)
            if not weeks:
                summary.note = f"no week after {last_weeks[spec.name]} within its partitions to live"
            elif plan[spec.name].week_by_week:
                for week in weeks:
                    summary.story.append(_live_week(settings, defs, instance, service, spec, week, summary))
            else:
                _replay_and_measure(settings, defs, instance, service, spec, weeks, summary)
            if weeks:
                summary.weeks = (weeks[0], weeks[-1])
    for spec in served:
        logged = read_prediction_log(settings.home, spec.name, expand_inputs=False)
        if len(logged):
            counts = logged.groupby(["version", "role"]).size()
            summaries[spec.name].log_rows = {(str(v), str(r)): int(n) for (v, r), n in counts.items()}
    return list(summaries.values())


def _answered_rows(settings: Settings, model: str) -> int:
    from mlplatform.lib.routing import CANARY_ROLE, CHAMPION_ROLE

    return len(read_prediction_log(settings.home, model, roles=[CHAMPION_ROLE, CANARY_ROLE], expand_inputs=False))


def _send(settings: Settings, service: Service, spec: ModelSpec, first: date, weeks: int, summary: ProductionSummary):
    """Send the weeks' rows, then wait until the service's log writer has published them (it flushes every second)."""
    from mlplatform.serving.replay import feature_rows, records_of, replay_window, send

    before = _answered_rows(settings, spec.name)
    window = replay_window(first, weeks)
    result = send(records_of(feature_rows(spec, window, settings.warehouse_path), spec), service.url, spec.name)
    summary.sent += result.sent
    summary.answered += result.answered
    if result.errors:
        summary.note = f"{len(result.errors)} errors, first: {result.errors[0]}"
    deadline = time.monotonic() + 30
    while _answered_rows(settings, spec.name) < before + result.answered and time.monotonic() < deadline:
        time.sleep(0.2)
    return result


def _replay_and_measure(settings: Settings, defs, instance, service: Service, spec: ModelSpec, weeks: list[str],
                        summary: ProductionSummary) -> None:
    """The weeks' rows arrive (raw, staged, features: a staged model's requests are replayed from its features),
    their traffic goes through the service, then their outcomes come in (the production job)."""
    from mlplatform.defs.keys import features_key, raw_key, staged_key
    from mlplatform.demo.runner import check_results, run_job

    first, last = weeks[0], weeks[-1]
    arrived = [raw_key(spec), *([staged_key(spec)] if spec.staging is not None else []), features_key(spec)]
    data = run_job(defs, instance, names.weekly_job(spec.name), first, last, assets=arrived)
    if not data.success:
        summary.note = f"the data of weeks {first}..{last} did not arrive (run {data.run_id} failed); nothing was sent"
        return
    _send(settings, service, spec, date.fromisoformat(first), len(weeks), summary)
    result = run_job(defs, instance, names.production_job(spec.name), first, last)
    for evaluation in check_results(result):
        if evaluation.check_name == names.LIVE_DEGRADATION_CHECK:
            summary.live.append(f"week {evaluation.partition}: live_degradation "
                                f"{'PASS' if evaluation.passed else 'FAIL'}: {evaluation.description}")


def _live_week(settings: Settings, defs, instance, service: Service, spec: ModelSpec, week: str,
               summary: ProductionSummary) -> WeekStory:
    """One production week: traffic through the service, the weekly run, then the sensors, then the hot swap."""
    from mlplatform.demo.runner import check_results, run_job, tick_sensor
    from mlplatform.lib.aliases import CHAMPION
    from mlplatform.lib.tracking import Tracker

    tracker = Tracker.for_settings(settings)
    champion = tracker.alias_version(spec.name, CHAMPION)
    service.wait_for_champion(spec.name, champion)
    story = WeekStory(week, champion)
    story.sent = _send(settings, service, spec, date.fromisoformat(week), 1, summary).answered
    result = run_job(defs, instance, names.weekly_job(spec.name), week)
    for evaluation in check_results(result):
        if evaluation.partition != week:
            continue
        if evaluation.check_name == names.DRIFT_CHECK:
            story.drift_passed = evaluation.passed
        elif evaluation.check_name == names.LIVE_DEGRADATION_CHECK:
            story.degradation_passed = evaluation.passed if evaluation.metadata["judged"].value else None
            live, low, high = (evaluation.metadata[k].value for k in ("live", "live_ci_low", "live_ci_high"))
            reference = evaluation.metadata["evaluation"].value
            if not math.isnan(live):
                story.live = f"{live:.3f} [{low:.3f}, {high:.3f}]"
            if not math.isnan(reference):
                story.evaluation = f"{reference:.3f}"
            if not evaluation.passed:
                story.actions.append(evaluation.metadata["rollback_summary"].value)
            recovering = evaluation.metadata.get("recovery")
            if recovering is not None and recovering.value:
                story.recovery = recovering.value
                story.actions.append(recovering.value.split(":")[0])  # recovery started / goes on / ended
    runs = tick_sensor(defs, instance, names.decay_sensor(spec.name))
    runs += tick_sensor(defs, instance, names.retrain_sensor(spec.name))
    for run in runs:
        trigger = "decay" if run.tags.get(names.TRIGGER_TAG) == names.DECAY_TRIGGER else "drift"
        trigger = "recovery" if run.tags.get(names.RECOVERY_TAG) == "true" else trigger
        if run.job == names.rollback_job(spec.name):
            story.actions.append(f"rollback run {'done' if run.success else 'FAILED'}")
        else:
            story.actions.append(f"retrain ({trigger}) for {run.partition} {'done' if run.success else 'FAILED'}")
    now = tracker.alias_version(spec.name, CHAMPION)
    if now != champion:
        story.actions.append(f"champion v{champion} -> v{now}")
        service.wait_for_champion(spec.name, now)
    return story


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "FAIL")


def summary_lines(summaries: list[ProductionSummary]) -> list[str]:
    """What production did, per model: traffic, the prediction log by version and role, live performance, actions."""
    lines = []
    for s in summaries:
        if not s.served or s.weeks is None:
            lines.append(f"== {s.model} in production: {s.note or 'not served'}")
            continue
        logged = ", ".join(f"v{version} {role} {rows}" for (version, role), rows in sorted(s.log_rows.items()))
        verb = "lived" if s.story else "replayed"
        lines.append(f"== {s.model} in production: {verb} weeks {s.weeks[0]}..{s.weeks[1]} through the REST service: "
                     f"{s.sent} rows sent, {s.answered} answered; prediction log: {logged or 'empty'}"
                     + (f" ({s.note})" if s.note else ""))
        lines += [f"   {line}" for line in s.live]
        if s.story:
            lines.append(f"   {'week':<10} {'served by':>9}  {'drift':<5}  {'live ' + s.metric + ' [95% CI]':<26} "
                         f"{'its eval':>8}  {'live_degradation':<16}  what the platform did")
            for w in s.story:
                lines.append(f"   {w.week:<10} {'v' + w.served_by if w.served_by else '-':>9}  {_verdict(w.drift_passed):<5}  "
                             f"{w.live:<26} {w.evaluation:>8}  {_verdict(w.degradation_passed):<16}  "
                             f"{'; '.join(w.actions) or '-'}")
    return lines
