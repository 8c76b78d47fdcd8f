"""Alerts reach people: every kind of lifecycle alert arrives at a webhook, a Slack-compatible webhook and an SMTP
server (local receivers started here) exactly once, also after a receiver was down; routing and configuration."""

from __future__ import annotations

import json
import textwrap
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from mlplatform.lib import alerts
from mlplatform.lib.alerts import AlertsConfig, AlertSetup, FailedRun, ModelRouting
from mlplatform.lib.audit import AuditEvent, append_events
from mlplatform.lib.audit_key import AUDIT_KEY_ENV
from mlplatform.lib.warehouse import connect_when_free
from mlplatform.specs.loader import load_spec_file
from mlplatform.specs.policies import PolicyFileError, load_policies
from mlplatform_tests.alert_receivers import free_port, http_receiver, smtp_receiver
from mlplatform_tests.conftest import TOY_SPEC, toy_rows

EVERY_KIND = set(alerts.ALERT_KINDS)


def lifecycle_events(model: str) -> list[AuditEvent]:
    """One audit event of every kind a person is told about, among events nobody is told about."""
    run = "run-1234"
    return [
        AuditEvent(model, "model_trained", f"dagster run {run}", "v1 trained on week 2024-01-08", version="1",
                   week="2024-01-08"),
        AuditEvent(model, "alias_change", f"dagster run {run}", "challenger: v- -> v1; passed every gate",
                   version="1", week="2024-01-08", details={"alias": "challenger", "previous_version": None,
                                                             "action": "set"}),
        AuditEvent(model, "approval", "ann", "champion: v- -> v1; looks fine", version="1", week="2024-01-08",
                   details={"alias": "champion", "previous_version": None, "action": "set"}),
        AuditEvent(model, "drift_alert", f"dagster run {run}", "3 of 4 features drifted (share 0.75 > 0.5)",
                   week="2024-01-15", passed=False, dagster_run_id=run,
                   details={"method": "K-S", "drifted": ["x1", "x2", "color"], "drifted_share": 0.75,
                            "max_drifted_share": 0.5}),
        AuditEvent(model, "performance_alert", f"dagster run {run}", "live rmse 2.4 vs 1.1 at evaluation",
                   version="1", week="2024-01-15", passed=False, dagster_run_id=run,
                   details={"check": "live_degradation", "rollback_to": "1", "live": 2.4, "reference": 1.1,
                            "relative_drop": float("nan")}),
        AuditEvent(model, "rollback", "sensor toy_rollback_on_decay", "champion: v2 -> v1; live_degradation failed",
                   version="1", week="2024-01-08", details={"alias": "champion", "previous_version": "2",
                                                             "action": "set"}),
        AuditEvent(model, "training_halted", f"dagster run {run}", "training_data: 40% of rows outside the range",
                   week="2024-01-22", passed=False, details={"gate": "training_data"}),
        AuditEvent(model, "approval_refused", "mallory", "mallory may not approve toy (policy 'reviewed')",
                   version="1", details={"action": "promote"}),
        AuditEvent(model, "canary_stopped", f"dagster run {run}", "challenger: v3 -> v-; canary stopped: worse",
                   version=None, week="2024-01-22", details={"alias": "challenger", "previous_version": "3",
                                                             "action": "remove"}),
    ]


@pytest.fixture
def toy_spec(tmp_path: Path):
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "toy.yaml").write_text(TOY_SPEC + "owner: team:fraud\n")
    toy_rows().to_csv(folder / "toy.csv", index=False)
    spec, problems = load_spec_file(folder / "toy.yaml")
    assert spec is not None, problems
    return spec


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


def connect(path: Path):
    return lambda wait: connect_when_free(path, wait)


def append_with_alias_rows(connection, events: list[AuditEvent]) -> None:
    """The events, and the audit.alias_changes row of each alias move among them, as lib/promotion.py writes both (so
    the anchored check of `audit --verify` that alerts run finds the tables agreeing)."""
    from mlplatform.lib.audit import read_events, record_alias_changes

    append_events(connection, events)
    rows = []
    for model in {event.model for event in events}:
        for record in read_events(connection, model).to_dict("records"):
            details = json.loads(record["details"]) if isinstance(record["details"], str) else {}
            if isinstance(details, dict) and {"alias", "previous_version", "action"} <= set(details):
                rows.append({"changed_at": record["occurred_at"], "model": model, "alias": details["alias"],
                             "version": record["version"], "previous_version": details["previous_version"],
                             "actor": record["actor"], "reason": details.get("reason", str(record["summary"]).split(
                                 "; ", 1)[1] if "; " in str(record["summary"]) else ""),
                             "week": record["week"], "action": details["action"]})
    record_alias_changes(connection, rows)


def write_trail(path: Path, model: str = "toy", tamper: bool = True) -> None:
    """The lifecycle events, a failed retrain run, and (``tamper``) an edited early row, so the chain breaks."""
    with duckdb.connect(str(path)) as connection:
        append_with_alias_rows(connection, lifecycle_events(model))
        alerts.record_retrain_failures(connection, [FailedRun(
            "run-5678", model, f"{model}_retrain", alerts.utc_now(), "step toy_model: ValueError: no rows", "drift",
            "2024-01-22")])
        if tamper:
            connection.execute("update audit.events set summary = 'v1 trained on nothing' where model = ? and seq = 1",
                               [model])


def config_for(hook: str, smtp_port: int, **extra) -> AlertsConfig:
    return AlertsConfig.model_validate({
        "ui_url": "http://dagster.test:3000",
        "destinations": {
            "ops": {"type": "webhook", "url": f"{hook}/hook"},
            "chat": {"type": "slack", "url_env": "TEST_SLACK_URL"},
            "mail": {"type": "email", "host": "127.0.0.1", "port": smtp_port, "from": "mlplatform@test",
                     "to": ["fraud-team@test"]},
        },
        "routes": [{"teams": ["fraud"], "destinations": ["ops", "chat", "mail"]}],
        **extra,
    })


def test_every_alert_kind_reaches_webhook_slack_and_smtp_exactly_once(toy_spec, warehouse):
    write_trail(warehouse)
    with http_receiver() as (hook, received), smtp_receiver() as (smtp_port, mail):
        setup = AlertSetup(config_for(hook, smtp_port), {"toy": ModelRouting.of(toy_spec)})
        env = {"TEST_SLACK_URL": f"{hook}/slack"}
        first = alerts.deliver(connect(warehouse), setup, environ=env)
        again = alerts.deliver(connect(warehouse), setup, environ=env)

    assert not first.failed, [o.line() for o in first.failed]
    webhook, slack = received.posted_to("/hook"), received.posted_to("/slack")
    assert sorted(b["kind"] for b in webhook) == sorted(EVERY_KIND)  # each kind once, nothing else
    assert len({b["id"] for b in webhook}) == len(webhook)
    assert len(slack) == len(EVERY_KIND) and all(b["text"] and b["blocks"] for b in slack)
    assert sorted(m["X-Mlplatform-Alert-Id"] for m in mail.messages) == sorted(b["id"] for b in webhook)
    assert not again.outcomes  # the second pass sends nothing

    by_kind = {b["kind"]: b for b in webhook}
    drift = by_kind["drift_alert"]
    assert drift["model"] == "toy" and drift["team"] == "fraud" and drift["week"] == "2024-01-15"
    assert drift["facts"]["drifted_share"] == 0.75 and drift["passed"] is False
    assert drift["link"] == "http://dagster.test:3000/assets/toy/drift?view=partitions&partition=2024-01-15"
    assert drift["run_link"] == "http://dagster.test:3000/runs/run-1234"
    assert by_kind["rollback"]["title"] == "toy: champion automatically rolled back from v2 to v1"
    assert by_kind["approval_waiting"]["version"] == "1"
    assert by_kind["performance_alert"]["facts"] == {"check": "live_degradation", "rollback_to": "1", "live": 2.4,
                                                     "reference": 1.1, "relative_drop": None}  # strict JSON: no NaN
    assert by_kind["retrain_failed"]["facts"]["error"] == "step toy_model: ValueError: no rows"
    assert "changed after it was written" in by_kind["audit_verification_failed"]["summary"]
    assert by_kind["audit_verification_failed"]["link"] == "http://dagster.test:3000/assets/toy/audit_trail"
    subjects = {m["Subject"] for m in mail.messages}
    assert "[mlplatform] toy: input drift on week 2024-01-15" in subjects
    body = next(m for m in mail.messages if m["X-Mlplatform-Alert-Id"] == drift["id"]).get_content()
    assert "drifted_share: 0.75" in body and drift["link"] in body
    assert "*toy: input drift on week 2024-01-15*" in next(b for b in slack if "drift" in b["text"])["text"]


def test_a_receiver_that_was_down_gets_the_missed_alerts_once_and_the_others_nothing_twice(toy_spec, warehouse):
    write_trail(warehouse, tamper=False)
    port = free_port()  # nothing listens: connections are refused
    with smtp_receiver() as (smtp_port, mail):
        config = config_for(f"http://127.0.0.1:{port}", smtp_port, retry_seconds=30)
        config = config.model_copy(update={"destinations": {k: v for k, v in config.destinations.items() if k != "chat"},
                                           "routes": [alerts.AlertRoute(destinations=["ops", "mail"])]})
        setup = AlertSetup(config, {"toy": ModelRouting.of(toy_spec)})
        start = alerts.utc_now()
        down = alerts.deliver(connect(warehouse), setup, now=start)
        assert len(down.delivered) == len(mail.messages) == 8  # e-mail was up: every kind but the verification one
        assert len(down.failed) == 8 and sum(o.tried for o in down.failed) == 1  # one refused try, the rest wait
        assert "unreachable" in down.failed[0].error
        assert {o.next_attempt_at for o in down.failed} == {start + timedelta(seconds=30)}
        waiting = alerts.deliver(connect(warehouse), setup, now=start + timedelta(seconds=10))
        assert not waiting.outcomes  # inside the backoff: nothing is tried
        still = alerts.deliver(connect(warehouse), setup, now=start + timedelta(seconds=31))
        assert not still.delivered and {o.next_attempt_at for o in still.failed} == {start + timedelta(seconds=91)}
        assert not alerts.deliver(connect(warehouse), setup, now=start + timedelta(seconds=60)).outcomes  # 2nd wait: 60 s

        with http_receiver(port) as (_, received):
            back = alerts.deliver(connect(warehouse), setup, now=start + timedelta(seconds=92))
            after = alerts.deliver(connect(warehouse), setup, now=start + timedelta(seconds=150))
        assert len(back.delivered) == 8 and not back.failed and not after.outcomes
        assert sorted(b["kind"] for b in received.posted_to("/hook")) == sorted(EVERY_KIND - {"audit_verification_failed"})
        assert len(mail.messages) == 8  # nothing was sent twice to the destination that never failed

    with duckdb.connect(str(warehouse), read_only=True) as connection:
        rows = alerts.deliveries(connection)
    assert set(rows["status"]) == {"delivered"}
    assert rows[rows["destination"] == "ops"]["attempts"].max() == 3  # two refused tries, then the delivery


def test_a_second_failure_waits_twice_as_long_up_to_the_limit():
    config = AlertsConfig(retry_seconds=30, max_retry_seconds=100)
    assert [alerts.backoff(config, n) for n in (1, 2, 3, 4)] == [30, 60, 100, 100]


def test_routes_pick_destinations_by_team_policy_model_and_kind():
    config = AlertsConfig.model_validate({
        "destinations": {name: {"type": "webhook", "url": "http://127.0.0.1:9/x"} for name in ("a", "b", "c", "d")},
        "routes": [{"teams": ["team:fraud"], "destinations": ["a"]},
                   {"policies": ["regulated"], "kinds": ["approval_waiting"], "destinations": ["b", "a"]},
                   {"models": ["ads_ctr"], "destinations": ["c"]},
                   {"destinations": ["d"], "kinds": ["audit_verification_failed"]}]})
    fraud = ModelRouting("fraud_score", "fraud", "regulated", True)
    ads = ModelRouting("ads_ctr", "ads", None, False)
    assert alerts.destinations_for(config, fraud, "drift_alert") == ["a"]
    assert alerts.destinations_for(config, fraud, "approval_waiting") == ["a", "b"]
    assert alerts.destinations_for(config, ads, "drift_alert") == ["c"]
    assert alerts.destinations_for(config, ads, "audit_verification_failed") == ["c", "d"]
    # under approval: auto the gates that made a version challenger made it champion too: nobody waits
    challenger = {"alias": "challenger", "action": "set"}
    assert alerts.alert_kind("alias_change", challenger, fraud) == "approval_waiting"
    assert alerts.alert_kind("alias_change", challenger, ads) is None
    assert alerts.alert_kind("alias_change", {"alias": "champion", "action": "set"}, fraud) is None
    assert alerts.alert_kind("approval_pending", {}, fraud) == "approval_waiting"
    assert alerts.alert_kind("promotion_refused", {}, fraud) == "approval_refused"


def test_the_sensor_is_stopped_by_default_when_no_route_names_the_locations_models(tmp_path: Path):
    from dagster import DefaultSensorStatus

    from mlplatform.defs.alerts_sensor import build_alerts_sensor
    from mlplatform.lib.settings import Settings

    settings = Settings(home=tmp_path, specs_dir=tmp_path)
    config = AlertsConfig.model_validate({"destinations": {"a": {"type": "webhook", "url": "http://127.0.0.1:9/x"}},
                                          "routes": [{"teams": ["ads"], "destinations": ["a"]}]})
    fraud = {"fraud_score": ModelRouting("fraud_score", "fraud", None, True)}
    assert build_alerts_sensor(AlertSetup(config, fraud), settings).default_status == DefaultSensorStatus.STOPPED
    assert build_alerts_sensor(AlertSetup(AlertsConfig(), fraud), settings).default_status == DefaultSensorStatus.STOPPED
    ads = {"ads_ctr": ModelRouting("ads_ctr", "ads", None, False)}
    assert build_alerts_sensor(AlertSetup(config, ads), settings).default_status == DefaultSensorStatus.RUNNING


@pytest.mark.parametrize(("section", "key", "says"), [
    ("routes: [{destinations: [nowhere]}]", "alerts", "routes[0].destinations: found 'nowhere'; defined: none"),
    ("destinations: {m: {type: email, host: h, from: a@b, to: [c@d], password: hunter2}}", "alerts.destinations.m",
     "password_env"),
    ("destinations: {w: {type: webhook}}", "alerts.destinations.w", "exactly one of url"),
    ("destinations: {w: {type: pager, url: 'http://x'}}", "alerts.destinations.w", "webhook"),
    ("routes: [{destinations: [w], kinds: [drift]}]\n  destinations: {w: {type: webhook, url: 'http://x'}}",
     "alerts.routes.0", "allowed: drift_alert"),
])
def test_a_wrong_alerts_section_is_refused_naming_the_file_and_key(tmp_path: Path, section, key, says):
    file = tmp_path / "policies.yaml"
    file.write_text(textwrap.dedent("alerts:\n  " + section + "\n"))
    with pytest.raises(PolicyFileError) as refused:
        load_policies(file)
    assert str(file) in str(refused.value) and refused.value.key.startswith(key), refused.value
    assert says in str(refused.value)
    with pytest.raises(PolicyFileError):
        alerts.load_alerts_config(file)


def test_the_cli_sends_a_test_alert_and_delivers_a_pass(home, spec_dir, capsys, monkeypatch):
    from mlplatform.cli import main

    monkeypatch.delenv("MLPLATFORM_POLICIES", raising=False)  # the file beside the specs is the one read

    with http_receiver() as (hook, received):
        folder = spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
        (folder / "policies.yaml").write_text(json.dumps({"alerts": {
            "destinations": {"ops": {"type": "webhook", "url": f"{hook}/hook"}},
            "routes": [{"models": ["toy"], "destinations": ["ops"]}]}}))
        assert main(["alerts", "test"]) == 0
        assert received.posted_to("/hook")[0]["kind"] == "test"
        write_trail(home / "warehouse.duckdb", tamper=False)
        assert main(["alerts", "deliver"]) == 0
        assert main(["alerts", "deliver"]) == 0
    out = capsys.readouterr().out
    assert "sent a test alert to ops" in out and out.count("delivered toy#") == 8
    assert len(received.posted_to("/hook")) == 1 + 8


def test_the_sensor_records_a_failed_retrain_and_delivers_each_alert_once(home, spec_dir, instance, monkeypatch):
    from dagster import DagsterRunStatus, DefaultSensorStatus, SensorResult, build_sensor_context

    from mlplatform_tests.helpers import load_definitions, warehouse_query

    monkeypatch.delenv("MLPLATFORM_POLICIES", raising=False)

    with http_receiver() as (hook, received):
        folder = spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
        (folder / "policies.yaml").write_text(json.dumps({"alerts": {
            "destinations": {"ops": {"type": "webhook", "url": f"{hook}/hook"}},
            "routes": [{"models": ["toy"], "destinations": ["ops"]}]}}))
        defs = load_definitions()
        sensor = defs.resolve_sensor_def("alerts_delivery")
        assert sensor.default_status == DefaultSensorStatus.RUNNING  # routes exist: on without a click
        with duckdb.connect(str(home / "warehouse.duckdb")) as connection:
            append_with_alias_rows(connection, lifecycle_events("toy"))
        retrain = defs.resolve_job_def("toy_retrain")
        run = instance.create_run_for_job(retrain, tags={"mlplatform/trigger": "drift",
                                                         "mlplatform/drift_week": "2024-01-15"})
        instance.report_run_failed(run)
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE

        tick = sensor(build_sensor_context(instance=instance, definitions=defs))
        assert isinstance(tick, SensorResult) and not tick.run_requests
        second = sensor(build_sensor_context(instance=instance, cursor=tick.cursor, definitions=defs))

    kinds = sorted(b["kind"] for b in received.posted_to("/hook"))
    assert kinds == sorted(EVERY_KIND - {"audit_verification_failed"})  # the chain is intact here
    failed = next(b for b in received.posted_to("/hook") if b["kind"] == "retrain_failed")
    assert failed["run_link"].endswith(f"/runs/{run.run_id}") and failed["week"] == "2024-01-15"
    assert "8 delivered" in tick.skip_reason.skip_message and "delivered toy#" in tick.skip_reason.skip_message
    assert "no new alerts" in second.skip_reason.skip_message
    trail = warehouse_query(home, "select event, dagster_run_id from audit.events where event = 'retrain_failed'")
    assert list(trail["dagster_run_id"]) == [run.run_id]  # recorded once, though two ticks saw the failed run


def test_smtp_login_and_webhook_urls_come_from_the_environment():
    """The secrets are named in the file and read from the environment; a missing one fails the delivery, naming it."""
    alert = alerts.sample_alert("mail", "http://localhost:3000", alerts.utc_now())
    with smtp_receiver() as (port, mail):
        destination = alerts.EmailDestination.model_validate({
            "type": "email", "host": "127.0.0.1", "port": port, "from": "mlplatform@test", "to": ["a@test", "b@test"],
            "username_env": "TEST_SMTP_USER", "password_env": "TEST_SMTP_PASSWORD"})
        alerts.send(alert, destination, {"TEST_SMTP_USER": "mlp", "TEST_SMTP_PASSWORD": "s3cret"})
        with pytest.raises(alerts.DeliveryError, match="TEST_SMTP_USER"):
            alerts.send(alert, destination, {})
    assert mail.logins == ["mlp:s3cret"] and len(mail.messages) == 1
    assert mail.messages[0]["To"] == "a@test, b@test"
    slack = alerts.SlackDestination(type="slack", url_env="TEST_SLACK_URL")
    with pytest.raises(alerts.DeliveryError, match="TEST_SLACK_URL"):
        alerts.send(alert, slack, {})


def test_a_pass_gives_up_at_once_while_a_run_holds_the_warehouse_and_sends_nothing(toy_spec, warehouse):
    """What keeps delivery from making a run wait: the sensor's read waits 2 s at most, then the next tick goes on."""
    import subprocess
    import sys
    import time

    from mlplatform.lib.warehouse import WarehouseBusy

    write_trail(warehouse, tamper=False)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); sys.stdin.read()", str(warehouse)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with http_receiver() as (hook, received):
            config = AlertsConfig.model_validate({"destinations": {"ops": {"type": "webhook", "url": f"{hook}/hook"}},
                                                  "routes": [{"destinations": ["ops"]}]})
            setup = AlertSetup(config, {"toy": ModelRouting.of(toy_spec)})
            started = time.monotonic()
            with pytest.raises(WarehouseBusy):
                alerts.deliver(connect(warehouse), setup, read_wait=0.5)
            assert time.monotonic() - started < 5 and not received.bodies
            holder.stdin.close()
            holder.wait(timeout=30)
            assert len(alerts.deliver(connect(warehouse), setup).delivered) == 8
    finally:
        holder.kill()
        holder.wait()


def test_alerts_read_every_spec_root_s_policy_file_and_models(home, tmp_path, capsys, monkeypatch):
    """Two spec roots (MLPLATFORM_SPECS=a:b), each with its policy file: `alerts deliver` routes each root's models
    by its own file (a route without selectors covers its root's models only), and the sensor routes both."""
    from mlplatform.cli import main
    from mlplatform.lib.settings import load_settings
    from mlplatform.specs import load_specs
    from mlplatform.specs.policies import PolicyFileError
    from mlplatform_tests.helpers import load_definitions

    monkeypatch.delenv("MLPLATFORM_POLICIES", raising=False)
    roots = {}
    with http_receiver() as (hook, received):
        for root, (model, team) in {"platform": ("score", "fraud"), "ads-repo": ("ctr", "ads")}.items():
            folder = roots[root] = tmp_path / root
            folder.mkdir()
            toy_rows().to_csv(folder / "toy.csv", index=False)
            (folder / f"{model}.yaml").write_text(TOY_SPEC.replace("name: toy", f"name: {model}") + f"team: {team}\n")
            (folder / "policies.yaml").write_text(json.dumps({"alerts": {
                "destinations": {f"{team}-hook": {"type": "webhook", "url": f"{hook}/{team}"}},
                "routes": [{"destinations": [f"{team}-hook"]}]}}))
        monkeypatch.setenv("MLPLATFORM_SPECS", f"{roots['platform']}:{roots['ads-repo']}")
        home.mkdir(parents=True, exist_ok=True)
        for model in ("score", "ctr"):
            write_trail(home / "warehouse.duckdb", model, tamper=False)
        assert main(["alerts", "deliver"]) == 0
        assert main(["alerts", "test"]) == 0  # a test alert to each destination of both files
    assert {b["model"] for b in received.posted_to("/fraud") if b["kind"] != "test"} == {"score"}
    assert {b["model"] for b in received.posted_to("/ads") if b["kind"] != "test"} == {"ctr"}
    for path in ("/fraud", "/ads"):  # each event once (write_trail's failed run is one run id: recorded for score)
        ids = [b["id"] for b in received.posted_to(path) if b["kind"] != "test"]
        assert len(ids) == len(set(ids)) >= 7 and [b["kind"] for b in received.posted_to(path)].count("test") == 1
    assert "sent a test alert to ads-hook" in capsys.readouterr().out

    sensor = load_definitions().resolve_sensor_def("alerts_delivery")
    assert "Models routed: score, ctr" in sensor.description

    (roots["ads-repo"] / "policies.yaml").write_text(json.dumps({"alerts": {  # one name, two meanings: refused
        "destinations": {"fraud-hook": {"type": "webhook", "url": "http://elsewhere.test/x"}},
        "routes": [{"destinations": ["fraud-hook"]}]}}))
    settings = load_settings()
    with pytest.raises(PolicyFileError, match="alerts.destinations.fraud-hook: 'fraud-hook' is also defined, "
                                              "differently, in .*platform/policies.yaml"):
        alerts.alert_setup(load_specs(settings.spec_roots, check_data=False), settings.spec_roots)


def test_deleting_the_newest_audit_event_sends_one_audit_verification_alert(home, spec_dir, capsys, monkeypatch):
    """`alerts deliver` runs the anchored check of `audit --verify` (the head against the checkpoint file): the
    newest event deleted (a valid, shorter chain) is one audit_verification_failed alert, sent once."""
    from mlplatform.cli import main
    from mlplatform.lib.audit_integrity import write_checkpoint

    monkeypatch.delenv("MLPLATFORM_POLICIES", raising=False)
    monkeypatch.setenv(AUDIT_KEY_ENV, "k" * 32)
    with http_receiver() as (hook, received):
        folder = spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
        (folder / "policies.yaml").write_text(json.dumps({"alerts": {
            "destinations": {"ops": {"type": "webhook", "url": f"{hook}/hook"}},
            "routes": [{"models": ["toy"], "destinations": ["ops"]}]}}))
        home.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(str(home / "warehouse.duckdb")) as connection:
            append_with_alias_rows(connection, lifecycle_events("toy"))
            assert write_checkpoint(connection, "toy", home) is not None  # as every committed unit does
        assert main(["alerts", "deliver"]) == 0
        assert [b["summary"] for b in received.posted_to("/hook") if b["kind"] == "audit_verification_failed"] == []

        with duckdb.connect(str(home / "warehouse.duckdb")) as connection:
            connection.execute("delete from audit.events where model = 'toy' and seq = (select max(seq) from "
                               "audit.events where model = 'toy')")
        for _ in range(2):
            assert main(["alerts", "deliver"]) == 0
    failed = [b for b in received.posted_to("/hook") if b["kind"] == "audit_verification_failed"]
    assert len(failed) == 1, failed
    assert "deleted: the checkpoint file says the trail reached event" in failed[0]["summary"]
    assert failed[0]["link"].endswith("/assets/toy/audit_trail")
    capsys.readouterr()
