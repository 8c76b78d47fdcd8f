"""The canary stage end to end: the real service over real HTTP, a real MLflow registry (SQLite), a real DuckDB
warehouse and audit. An auto-approved version serves as canary at the ramp's first share, not all traffic; the
analysis on the logged traffic raises its share (the service follows the tag), then promotes it (the service hot-swaps
to it); a version with shifted predictions is stopped by one analysis, with the numbers in the audit."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest

from mlplatform.lib import promotion
from mlplatform.lib.aliases import CHALLENGER, CHAMPION
from mlplatform.lib.canary import analyse_and_act, canary_state
from mlplatform.lib.prediction_log import read_prediction_log, utc_now
from mlplatform.lib.promotion import CANARY_SHARE_TAG
from mlplatform.lib.rollout_analysis import PROMOTE, STOP
from mlplatform.lib.tracking import Tracker
from mlplatform.lib.training import build_pipeline, split_xy
from mlplatform.specs import load_specs
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.test_serving import World, feature_rows, records, serve, wait_until

pytestmark = pytest.mark.slow

ROLLOUT = """rollout:
  approval: auto
  auto_promote: canary
  ramp: [10, 50]
  analysis: {min_requests: 60, min_minutes: 0, window_minutes: 60}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("canary")
    home, specs_dir = root / "home", root / "specs"
    specs_dir.mkdir()
    rows = toy_rows(weeks=3, per_week=40)
    rows.to_csv(specs_dir / "toy.csv", index=False)
    (specs_dir / "toy_ramp.yaml").write_text(textwrap.dedent(TOY_SPEC).replace("name: toy", "name: toy_ramp") + ROLLOUT)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLPLATFORM_HOME", str(home))
        patch.setenv("MLPLATFORM_SPECS", str(specs_dir))
        yield World(home, specs_dir, rows, Tracker.under(home / "mlflow"))


def register(world: World, offset: float, week: str, steep: bool = False) -> str:
    """Train and register a version on y + offset (offset 0: a good canary; 5: shifted predictions); ``steep``: on
    y + 39 x2, a model whose x2 weight is 40 times the usual one (its predictions overflow where the champion's do
    not)."""
    spec = world.spec("toy_ramp")
    x, y = split_xy(world.rows, spec)
    if steep:  # a linear model: a tree ensemble never overflows
        y = y + 39 * x["x2"]
        spec.estimator.class_name, spec.estimator.params = "sklearn.linear_model.Ridge", {"alpha": 0.1}
    pipeline = build_pipeline(spec).fit(x, y + offset)
    return world.tracker.log_trained_model("toy_ramp", f"toy_ramp-{week}", pipeline, x.head(5), {}, {}, {}, {},
                                           {"gates": "passed", "week": week}).version


def gates_pass(world: World, version: str, week: str, name: str = "toy_ramp") -> list[promotion.AliasChange]:
    """What the model step does when a version passes every gate (lib/lifecycle.py), committed with its audit."""
    spec = next(s for s in load_specs(world.specs_dir) if s.name == name)
    tracker = world.tracker
    current = {alias: tracker.alias_version(name, alias) for alias in (CHALLENGER, CHAMPION)}
    weeks = {alias: tracker.version_tags(name, v).get("week") if v else None for alias, v in current.items()}
    changes, _ = promotion.gate_changes(name, version, True, week, "test", "auto", current, weeks, spec.rollout)
    with duckdb.connect(str(world.home / "warehouse.duckdb")) as connection:
        promotion.commit_changes(connection, tracker, changes)
    return changes


def drive(server, first_id: int, n: int = 400, name: str = "toy_ramp") -> dict[str, float]:
    """``n`` one-record requests of distinct entities; the share of each role answered."""
    roles = []
    for record in records(feature_rows(n, seed=first_id).assign(id=np.arange(first_id, first_id + n)),
                          ["id", "x1", "x2", "color"]):
        response = server.predict(name, [record])
        assert response.status_code == 200, response.text
        roles.append(response.json()["predictions"][0]["role"])
    return {role: roles.count(role) / n for role in set(roles)}


def logged_after(world: World, count: int, name: str = "toy_ramp") -> None:
    wait_until(lambda: len(read_prediction_log(world.home, name, expand_inputs=False)) >= count)


def audit(world: World) -> list[tuple[str, str]]:
    with duckdb.connect(str(world.home / "warehouse.duckdb"), read_only=True) as connection:
        return connection.execute("select event, summary from audit.events where model = 'toy_ramp' "
                                  "order by seq").fetchall()


def test_an_auto_approved_version_serves_as_canary_ramps_on_evidence_then_a_shifted_one_is_stopped(world: World):
    spec = world.spec("toy_ramp")
    tracker = world.tracker
    gates_pass(world, register(world, 0.0, "2024-01-01"), "2024-01-01")  # the first version: champion at once
    assert tracker.alias_version("toy_ramp", CHAMPION) == "1"
    gates_pass(world, register(world, 0.0, "2024-01-08"), "2024-01-08")
    assert tracker.alias_version("toy_ramp", CHAMPION) == "1"  # auto, but canary first
    assert tracker.alias_version("toy_ramp", CHALLENGER) == "2"
    assert tracker.version_tags("toy_ramp", "2")[CANARY_SHARE_TAG] == "10"

    with serve(world, ["toy_ramp"]) as server:
        shares = drive(server, 0, 600)
        assert shares["canary"] == pytest.approx(0.10, abs=0.04)  # the canary share, not all traffic
        logged_after(world, 600)
        run = analyse_and_act(world.home, world.home / "warehouse.duckdb", spec, tracker, 30)
        assert run.analysis.decision == PROMOTE, run.text()
        assert run.change is not None and run.change.kind == "canary_step"
        assert tracker.version_tags("toy_ramp", "2")[CANARY_SHARE_TAG] == "50"
        wait_until(lambda: server.client.get("/v1/models/toy_ramp").json()["rollout"]["canary_share"] == 50)
        assert drive(server, 10_000, 400)["canary"] == pytest.approx(0.5, abs=0.08)  # the service followed the tag
        logged_after(world, 1000)
        run = analyse_and_act(world.home, world.home / "warehouse.duckdb", spec, tracker, 30)
        assert run.analysis.decision == PROMOTE and run.change is not None, run.text()
        assert run.change.kind == "canary_promoted" and tracker.alias_version("toy_ramp", CHAMPION) == "2"
        wait_until(lambda: server.champion("toy_ramp") == "2")  # hot swap
        assert drive(server, 20_000, 100) == {"champion": 1.0}

        gates_pass(world, register(world, 5.0, "2024-01-15"), "2024-01-15")  # predictions shifted by +5
        wait_until(lambda: server.client.get("/v1/models/toy_ramp").json()["rollout"]["challenger_version"] == "3")
        assert drive(server, 30_000, 800)["canary"] == pytest.approx(0.10, abs=0.04)
        logged_after(world, 1900)
        run = analyse_and_act(world.home, world.home / "warehouse.duckdb", spec, tracker, 30)
        assert run.analysis.decision == STOP, run.text()
        assert [s.name for s in run.analysis.signals if s.worse] == ["predictions"]
        assert tracker.alias_version("toy_ramp", CHALLENGER) is None and tracker.alias_version("toy_ramp", CHAMPION) == "2"
        wait_until(lambda: server.client.get("/v1/models/toy_ramp").json()["rollout"]["active"] == "none")
        assert drive(server, 40_000, 100) == {"champion": 1.0}

        steep = register(world, 0.0, "2024-01-22", steep=True)  # fine on usual inputs; 40 x2 overflows on x2 = 1e307
        gates_pass(world, steep, "2024-01-22")
        wait_until(lambda: server.client.get("/v1/models/toy_ramp").json()["rollout"]["challenger_version"] == steep)
        statuses = {}
        for i, record in enumerate(records(feature_rows(1500, seed=9).assign(id=np.arange(50_000, 51_500)),
                                           ["id", "x1", "x2", "color"])):
            if i % 10 == 0:
                record["x2"] = 1e307  # the spec sets no bound on x2
            response = server.predict("toy_ramp", [record])
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert set(statuses) == {200, 422}  # the canary's overflows: 422 naming the record, logged as error rows
        wait_until(lambda: len(read_prediction_log(world.home, "toy_ramp", expand_inputs=False, errors=True,
                                                   start=utc_now() - timedelta(minutes=5))) >= 1500)
        run = analyse_and_act(world.home, world.home / "warehouse.duckdb", spec, tracker, 30)
        assert run.analysis.decision == STOP and "error rate" in run.analysis.reason, run.text()
        errors = next(s for s in run.analysis.signals if s.name == "error rate")
        assert errors.canary > 0.05 and errors.champion == 0.0
    events = audit(world)
    kinds = [event for event, _ in events]
    assert kinds.count("canary_step") == 1 and kinds.count("canary_promoted") == 1 and kinds.count("canary_stopped") == 2
    stopped = next(summary for event, summary in events if event == "canary_stopped")
    assert "predictions: WORSE" in stopped and "two-sample KS" in stopped  # the numbers are in the audit


def test_a_canary_whose_scoring_fails_leaves_error_rows_by_version_and_role(world: World, tmp_path: Path):
    """What the error-rate signal reads: a failed scoring is logged with its version, role and status."""
    from mlplatform.lib.prediction_log import write_segments

    rows = [{"request_id": "r1", "record_index": 0, "record_id": None, "time": __import__("datetime").datetime(2026, 1, 1),
             "model": "m", "version": "2", "role": "canary", "entity_key": "1", "inputs": {"x": 1.0}, "score": None,
             "label": None, "probabilities": None, "latency_ms": 3.0, "status": 500},
            {"request_id": "r2", "record_index": 0, "record_id": None, "time": __import__("datetime").datetime(2026, 1, 1),
             "model": "m", "version": "1", "role": "champion", "entity_key": "2", "inputs": {"x": 1.0}, "score": 1.0,
             "label": "1.0", "probabilities": None, "latency_ms": 3.0}]
    write_segments(tmp_path / "prediction_log", rows)
    answered = read_prediction_log(tmp_path, "m")
    everything = read_prediction_log(tmp_path, "m", errors=True)
    assert list(answered["request_id"]) == ["r2"] and list(answered["status"]) == [200]
    assert sorted(zip(everything["version"], everything["role"], everything["status"], strict=True)) == [
        ("1", "champion", 200), ("2", "canary", 500)]


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "recommender_ctr"


@pytest.fixture
def recommender(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    """examples/recommender_ctr in a temp folder (its clicks file is where live clicks arrive), judged at once."""
    import shutil

    specs_dir, home = tmp_path / "specs", tmp_path / "home"
    shutil.copytree(EXAMPLE, specs_dir)
    spec_file = specs_dir / "recommender_ctr.yaml"
    spec_file.write_text(spec_file.read_text().replace("min_minutes: 30", "min_minutes: 0"))
    monkeypatch.setenv("MLPLATFORM_HOME", str(home))
    monkeypatch.setenv("MLPLATFORM_SPECS", str(specs_dir))
    import pandas as pd

    return World(home, specs_dir, pd.read_csv(specs_dir / "impressions.csv"), Tracker.under(home / "mlflow"))


def test_the_recommender_canary_with_a_lower_click_through_rate_is_stopped_and_a_good_one_ramps_to_champion(
        recommender: World):
    """The issue's recommender scenario on GENERATED clicks (mlplatform/demo/recommender_clicks.py): 5 % canary."""
    import pandas as pd

    from mlplatform.demo.recommender_clicks import generated_impressions, simulated_clicks
    from mlplatform.lib.prediction_log import utc_now

    world, name = recommender, "recommender_ctr"
    spec = world.spec(name)
    x, y = split_xy(world.rows, spec)
    warehouse = world.home / "warehouse.duckdb"

    def version(rows, labels, week: str) -> str:
        pipeline = build_pipeline(spec).fit(rows, labels)
        made = world.tracker.log_trained_model(name, f"{name}-{week}", pipeline, x.head(5), {}, {}, {}, {},
                                               {"gates": "passed", "week": week}).version
        current = {alias: world.tracker.alias_version(name, alias) for alias in (CHALLENGER, CHAMPION)}
        weeks = {a: world.tracker.version_tags(name, v).get("week") if v else None for a, v in current.items()}
        changes, _ = promotion.gate_changes(name, made, True, week, "test", "auto", current, weeks, spec.rollout)
        with duckdb.connect(str(warehouse)) as connection:
            promotion.commit_changes(connection, world.tracker, changes)
        return made

    clicks_file = world.specs_dir / "clicks.csv"
    served_so_far = [0]

    def traffic(server, n: int) -> None:
        """``n`` live impressions over HTTP; their simulated clicks arrive in the clicks file."""
        impressions = generated_impressions(weeks=1, per_week=n, seed=served_so_far[0] + 1,
                                            first_id=100_000 + served_so_far[0])
        served_so_far[0] += n
        scores = []
        for record in records(impressions, ["impression_id", "user_affinity", "item_popularity", "position",
                                            "category"]):
            response = server.predict(name, [record])
            assert response.status_code == 200, response.text
            scores.append(response.json()["predictions"][0]["probabilities"]["1"])
        clicked = simulated_clicks(impressions, np.array(scores), seed=served_so_far[0])
        now = utc_now().strftime("%Y-%m-%d %H:%M:%S")
        pd.DataFrame({"impression_id": impressions["impression_id"], "ts": now, "clicked": clicked}).to_csv(
            clicks_file, mode="a", header=False, index=False)
        wait_until(lambda: len(read_prediction_log(world.home, name, expand_inputs=False)) >= served_so_far[0])

    def analysis():
        return analyse_and_act(world.home, warehouse, world.spec(name), world.tracker, 30)

    rng = np.random.default_rng(3)
    assert version(x, y, "2024-01-29") == "1" and world.tracker.alias_version(name, CHAMPION) == "1"
    worse = version(x, rng.permutation(np.asarray(y)), "2024-02-05")  # learned nothing: misjudges the interest
    with serve(world, [name]) as server:
        traffic(server, 2400)
        run = analysis()
        assert run.analysis.decision == STOP, run.text()
        assert "click-through rate" in [s.name for s in run.analysis.signals if s.worse], run.text()
        ctr = next(s for s in run.analysis.signals if s.name == "click-through rate")
        assert ctr.canary < ctr.champion
        assert world.tracker.alias_version(name, CHALLENGER) is None  # stopped: the 5 % goes back to the champion
        wait_until(lambda: server.client.get(f"/v1/models/{name}").json()["rollout"]["active"] == "none")

        resample = rng.integers(0, len(x), len(x))  # the same data, another sample of it
        good = version(x.iloc[resample], np.asarray(y)[resample], "2024-02-05")
        assert good != worse
        wait_until(lambda: server.client.get(f"/v1/models/{name}").json()["rollout"]["canary_share"] == 5)
        steps = []
        for n in (2400, 500, 400):
            traffic(server, n)
            run = analysis()
            assert run.analysis.decision == PROMOTE and run.change is not None, run.text()
            steps.append(run.change.kind)
        assert steps == ["canary_step", "canary_step", "canary_promoted"]
        assert world.tracker.alias_version(name, CHAMPION) == good
        wait_until(lambda: server.champion(name) == good)


def test_the_sensor_requests_one_analysis_per_interval_while_a_canary_serves_and_the_job_and_cli_show_the_evidence(
        home, spec_dir, instance, capsys):
    """The wiring: sensor -> run of <model>_canary_analysis (evidence in its metadata) and `mlplatform canary`."""
    from dagster import build_sensor_context

    from mlplatform.cli import main
    from mlplatform_tests.helpers import load_definitions

    spec_dir({"toy.yaml": TOY_SPEC + ROLLOUT.replace("min_requests: 60", "min_requests: 5")}, {"toy.csv": toy_rows()})
    tracker = Tracker.under(home / "mlflow")
    spec = next(s for s in load_specs(spec_dir({}, {})) if s.name == "toy")
    x, y = split_xy(toy_rows(), spec)
    for week in ("2024-01-08", "2024-01-15"):
        made = tracker.log_trained_model("toy", f"toy-{week}", build_pipeline(spec).fit(x, y), x.head(5), {}, {}, {},
                                         {}, {"gates": "passed", "week": week}).version
        current = {alias: tracker.alias_version("toy", alias) for alias in (CHALLENGER, CHAMPION)}
        weeks = {a: tracker.version_tags("toy", v).get("week") if v else None for a, v in current.items()}
        with duckdb.connect(str(home / "warehouse.duckdb")) as connection:
            promotion.commit_changes(connection, tracker, promotion.gate_changes(
                "toy", made, True, week, "test", "auto", current, weeks, spec.rollout)[0])
    assert (tracker.alias_version("toy", CHAMPION), tracker.alias_version("toy", CHALLENGER)) == ("1", "2")

    defs = load_definitions()
    sensor = next(s for s in defs.sensors if s.name == "toy_canary_sensor")
    assert sensor.minimum_interval_seconds == 3600
    request = sensor.evaluate_tick(build_sensor_context(instance=instance, resources={"model_registry": defs.resources["model_registry"]})).run_requests[0]
    assert request.run_key.startswith("toy-canary-2-")
    job = defs.resolve_job_def("toy_canary_analysis")
    result = job.execute_in_process(instance=instance, run_config=request.run_config)
    assert result.success
    materialized = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"][0]
    shown = materialized.event_specific_data.metadata
    assert shown["decision"].value == "continue" and "too little traffic" in shown["reason"].value
    assert shown["canary_version"].value == "2" and shown["share_percent"].value == 10.0

    assert main(["canary", "toy"]) == 0
    printed = capsys.readouterr().out
    assert "canary analysis: CONTINUE: too little traffic" in printed and "canary v2: 0 requests" in printed
    assert main(["promote", "toy", "--by", "alice", "--reason", "reviewed"]) == 0  # a person, with the evidence shown
    printed = capsys.readouterr().out
    assert printed.index("live canary evidence") < printed.index("champion v1 -> v2")
    assert "no canary" in sensor.evaluate_tick(build_sensor_context(instance=instance, resources={"model_registry": defs.resources["model_registry"]})).skip_message


def test_clicks_in_a_warehouse_table_stop_a_canary_with_a_lower_click_through_rate(recommender: World):
    """``labels.table``: the recommender's clicks in a DuckDB table (as a dbt model would build them) feed the
    analysis's business metric as ``labels.path`` does. Both arms score alike; the canary's impressions are clicked
    a third as often, so one analysis stops it on the click-through rate alone, audited with the numbers."""
    import pandas as pd

    from mlplatform.lib.prediction_log import write_segments
    from mlplatform.lib.routing import entity_key

    world, name = recommender, "recommender_ctr"
    spec_file = world.specs_dir / "recommender_ctr.yaml"
    spec_file.write_text(spec_file.read_text().replace("path: clicks.csv", "table: main.clicks"))
    spec = world.spec(name)
    assert spec.labels.table == "main.clicks"
    warehouse = world.home / "warehouse.duckdb"
    x, y = split_xy(world.rows, spec)
    pipeline = build_pipeline(spec).fit(x, y)
    for week in ("2024-01-29", "2024-02-05"):  # the first is champion at once, the second a 5 % canary
        made = world.tracker.log_trained_model(name, f"{name}-{week}", pipeline, x.head(5), {}, {}, {}, {},
                                               {"gates": "passed", "week": week}).version
        current = {alias: world.tracker.alias_version(name, alias) for alias in (CHALLENGER, CHAMPION)}
        weeks = {a: world.tracker.version_tags(name, v).get("week") if v else None for a, v in current.items()}
        with duckdb.connect(str(warehouse)) as connection:
            promotion.commit_changes(connection, world.tracker, promotion.gate_changes(
                name, made, True, week, "test", "auto", current, weeks, spec.rollout)[0])
    assert (world.tracker.alias_version(name, CHAMPION), world.tracker.alias_version(name, CHALLENGER)) == ("1", "2")

    rng = np.random.default_rng(5)
    since = canary_state(world.tracker, spec).since  # the analysis reads no traffic from before the canary's share
    now, rows, clicks = utc_now(), [], []
    for i in range(3000):
        canary = i % 10 == 0  # 300 canary impressions, 2700 champion ones
        score = float(rng.beta(2, 5))
        when = since + (now - since) * (i + 1) / 3001
        rows.append({"request_id": f"r{i}", "record_index": 0, "record_id": None, "time": when, "model": name,
                     "version": "2" if canary else "1", "role": "canary" if canary else "champion",
                     "entity_key": entity_key({"impression_id": 500_000 + i}, ["impression_id"]),
                     "inputs": {"user_affinity": 0.5, "item_popularity": 0.5, "position": 1.0, "category": "news"},
                     "score": score, "label": "1" if score >= 0.5 else "0",
                     "probabilities": {"0": 1 - score, "1": score}, "latency_ms": float(rng.gamma(4, 1.0))})
        clicks.append((500_000 + i, when, int(rng.random() < (0.1 if canary else 0.3))))
    write_segments(world.home / "prediction_log", rows)

    before = analyse_and_act(world.home, warehouse, spec, world.tracker, 30, act=False)  # no table yet: no outcomes
    assert "click-through rate" not in [s.name for s in before.analysis.signals], before.text()
    with duckdb.connect(str(warehouse)) as connection:
        connection.register("arrived", pd.DataFrame(clicks, columns=["impression_id", "ts", "clicked"]))
        connection.execute("create table main.clicks as select * from arrived")
    run = analyse_and_act(world.home, warehouse, spec, world.tracker, 30)
    assert run.analysis.decision == STOP, run.text()
    assert [s.name for s in run.analysis.signals if s.worse] == ["click-through rate"], run.text()
    ctr = next(s for s in run.analysis.signals if s.name == "click-through rate")
    assert ctr.canary < 0.2 < ctr.champion
    assert world.tracker.alias_version(name, CHALLENGER) is None and world.tracker.alias_version(name, CHAMPION) == "1"
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        [(summary,)] = connection.execute("select summary from audit.events where model = ? and event = "
                                          "'canary_stopped'", [name]).fetchall()
    assert "click-through rate: WORSE" in summary


SLOW_TEAM = """
\"\"\"A team's ridge regression that takes ``delay_ms`` longer to answer every call: a genuinely slower version.\"\"\"
import time

from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder


class Slow(RegressorMixin, BaseEstimator):
    def __init__(self, delay_ms=0.0):
        self.delay_ms = delay_ms

    def fit(self, x, y):
        self.ridge_ = Ridge(alpha=0.1).fit(x, y)
        return self

    def predict(self, x):
        time.sleep(self.delay_ms / 1000)
        return self.ridge_.predict(x)


def build(delay_ms=0.0):
    encode = ColumnTransformer([("numbers", SimpleImputer(), ["x1", "x2"]),
                                ("colors", OneHotEncoder(handle_unknown="ignore"), ["color"])])
    return Pipeline([("encode", encode), ("slow", Slow(delay_ms))])
"""
SLOW_SPEC = """estimator:
  factory: slow_team.models.build
policy: live_first
rollout:
  approval: auto
  auto_promote: canary
  canary_percent: 20
  analysis: {min_requests: 30, min_minutes: 0}
"""


def test_a_canary_whose_model_is_slower_is_stopped_on_its_p99_through_the_real_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A doubled p99 on real HTTP: the canary's own model (a team's ``estimator.factory``, served by the generic
    path like the champion) waits 100 ms per call; the champion is the same model without the wait (its p99 is a few
    ms idle, tens on a busy machine: the wait keeps the canary's at least double). One analysis of the logged
    traffic stops the canary on latency p99 alone. Its policy's minimum canary share is in /v1/models."""
    team = tmp_path / "team"
    (team / "slow_team").mkdir(parents=True)
    (team / "slow_team" / "__init__.py").write_text("")
    (team / "slow_team" / "models.py").write_text(SLOW_TEAM)
    monkeypatch.syspath_prepend(str(team))  # the team's installed package
    monkeypatch.setenv("MLPLATFORM_ESTIMATOR_MODULES", "slow_team")
    home, specs_dir = tmp_path / "home", tmp_path / "specs"
    specs_dir.mkdir()
    monkeypatch.setenv("MLPLATFORM_HOME", str(home))
    monkeypatch.setenv("MLPLATFORM_SPECS", str(specs_dir))
    rows = toy_rows(weeks=3, per_week=40)
    rows.to_csv(specs_dir / "toy.csv", index=False)
    (specs_dir / "policies.yaml").write_text("policies:\n  live_first: {min_canary_percent: 20}\n")
    (specs_dir / "toy_slow.yaml").write_text(textwrap.dedent(TOY_SPEC).replace("name: toy", "name: toy_slow")
                                             + SLOW_SPEC)
    world = World(home, specs_dir, rows, Tracker.under(home / "mlflow"))
    spec = world.spec("toy_slow")
    x, y = split_xy(rows, spec)
    for week, delay_ms in (("2024-01-08", 0.0), ("2024-01-15", 100.0)):
        spec.estimator.params = {"delay_ms": delay_ms}
        made = world.tracker.log_trained_model("toy_slow", f"toy_slow-{week}", build_pipeline(spec).fit(x, y),
                                               x.head(5), {}, {}, {}, {}, {"gates": "passed", "week": week}).version
        gates_pass(world, made, week, "toy_slow")
    assert (world.tracker.alias_version("toy_slow", CHAMPION), world.tracker.alias_version("toy_slow", CHALLENGER)) \
        == ("1", "2")

    with serve(world, ["toy_slow"]) as server:
        assert server.client.get("/v1/models/toy_slow").json()["rollout"]["min_canary_percent"] == 20
        assert drive(server, 0, 250, "toy_slow")["canary"] == pytest.approx(0.20, abs=0.08)
        logged_after(world, 250, "toy_slow")
        run = analyse_and_act(world.home, world.home / "warehouse.duckdb", spec, world.tracker, 30)
        assert run.analysis.decision == STOP, run.text()
        assert [s.name for s in run.analysis.signals if s.worse] == ["latency p99"], run.text()
        p99 = next(s for s in run.analysis.signals if s.name == "latency p99")
        assert p99.canary >= 100 and p99.canary >= 2 * p99.champion, run.text()  # the wait is in what was served
        assert world.tracker.alias_version("toy_slow", CHALLENGER) is None
        wait_until(lambda: server.client.get("/v1/models/toy_slow").json()["rollout"]["active"] == "none")
