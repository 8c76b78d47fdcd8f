"""Serving end to end: real uvicorn on a free loopback port, real HTTP (httpx), a real MLflow registry (SQLite).

One temp home per module: toy models are trained and registered once (through ``Tracker``, as the pipeline does),
then each test starts its own server on it. Tests that move aliases put them back.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlplatform.lib.prediction_log import read_prediction_log, utc_now
from mlplatform.lib.routing import CANARY_ROLE, role_for
from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
from mlplatform.lib.training import build_pipeline, split_xy
from mlplatform.serving.app import ServingConfig
from mlplatform.serving.server import ServerOptions, uvicorn_config
from mlplatform.specs import load_specs
from mlplatform_tests.conftest import TOY_SPEC, toy_rows

ROLLOUT = {
    "toy": "rollout: {canary_percent: 0}",
    "toy_canary": "rollout: {canary_percent: 20}",
    "toy_shadow": "rollout: {canary_percent: 0, shadow: true}",
}
BINARY_SPEC = """
name: toy_bin
task: binary
source:
  path: toy.csv
  timestamp: ts
target: big
features:
  numeric: [x1, x2]
  categorical: [color]
columns:
  x1: {min: 0, max: 10, nullable: false}
  color: {categories: [red, green, blue]}
partitions:
  start: 2024-01-01
  end: 2024-01-22
estimator:
  class: sklearn.linear_model.LogisticRegression
rollout: {canary_percent: 0}
"""
ALPHAS = {"1": 0.1, "2": 100.0, "3": 1000.0, "4": 5000.0}
GATES = {"1": "passed", "2": "passed", "3": "passed", "4": "failed"}


@dataclass
class World:
    home: Path
    specs_dir: Path
    rows: pd.DataFrame
    tracker: Tracker

    def spec(self, name: str):
        return next(s for s in load_specs(self.specs_dir) if s.name == name)

    def pipeline(self, name: str, version: str):
        """The registered version loaded straight from MLflow (independently of the service)."""
        mlflow.set_tracking_uri(self.tracker.tracking_uri)
        mlflow.set_registry_uri(self.tracker.tracking_uri)
        return mlflow.sklearn.load_model(f"models:/{name}/{version}")

    def aliases(self, name: str, champion: str | None, challenger: str | None = None) -> None:
        for alias, version in ((CHAMPION, champion), (CHALLENGER, challenger)):
            if version is None:
                try:
                    self.tracker.client.delete_registered_model_alias(name, alias)
                except mlflow.exceptions.MlflowException:
                    pass
            else:
                self.tracker.set_alias(name, alias, version)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("serving")
    home, specs_dir = root / "home", root / "specs"
    specs_dir.mkdir()
    rows = toy_rows(weeks=3, per_week=40)
    rows["big"] = np.where(rows["y"] > 10, "yes", "no")
    for name, rollout in ROLLOUT.items():
        text = textwrap.dedent(TOY_SPEC).replace("name: toy", f"name: {name}") + rollout + "\n"
        (specs_dir / f"{name}.yaml").write_text(text)
    (specs_dir / "toy_bin.yaml").write_text(textwrap.dedent(BINARY_SPEC))
    rows["steep"] = rows["x1"] + 4 * rows["x2"]  # x2 has no bound in the spec: x2 = 1e308 overflows the model
    (specs_dir / "toy_steep.yaml").write_text(textwrap.dedent(TOY_SPEC).replace("name: toy", "name: toy_steep")
                                              .replace("target: y", "target: steep") + ROLLOUT["toy_shadow"] + "\n")
    rows.to_csv(specs_dir / "toy.csv", index=False)
    saved = {k: os.environ.get(k) for k in ("MLPLATFORM_HOME", "MLPLATFORM_SPECS")}
    os.environ["MLPLATFORM_HOME"], os.environ["MLPLATFORM_SPECS"] = str(home), str(specs_dir)
    tracker = Tracker.under(home / "mlflow")
    world = World(home, specs_dir, rows, tracker)
    for name in ("toy", "toy_canary", "toy_shadow", "toy_bin", "toy_steep"):
        spec = world.spec(name)
        x, y = split_xy(rows, spec)
        versions = ALPHAS if name == "toy" else {"1": 0.1} if name in ("toy_bin", "toy_steep") else {"1": 0.1, "2": 1000.0}
        for version, alpha in versions.items():
            if spec.task == "regression":
                spec.estimator.class_name, spec.estimator.params = "sklearn.linear_model.Ridge", {"alpha": alpha}
            else:
                spec.estimator.params = {"C": 1 / alpha}
            pipeline = build_pipeline(spec).fit(x, y)
            logged = tracker.log_trained_model(name, f"{name}-{version}", pipeline, x.head(5), {"alpha": alpha},
                                               {}, {}, {}, {"gates": GATES[version]})
            assert logged.version == version
        world.aliases(name, "1", "2" if name in ("toy_canary", "toy_shadow") else None)
    steep = world.spec("toy_steep")  # its shadow challenger: 40 x2 overflows where the champion's 4 x2 does not
    steep.estimator.class_name, steep.estimator.params = "sklearn.linear_model.Ridge", {"alpha": 0.1}
    x_steep = split_xy(rows, steep)[0]
    steeper = build_pipeline(steep).fit(x_steep, rows["x1"] + 40 * rows["x2"])
    tracker.log_trained_model("toy_steep", "toy_steep-2", steeper, x_steep.head(5), {}, {}, {}, {}, {"gates": "passed"})
    world.aliases("toy_steep", "1", "2")
    yield world
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """The real app under real uvicorn, in a thread of the test process, on a free loopback port."""

    def __init__(self, config: ServingConfig):
        import uvicorn

        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(config, ServerOptions(port=self.port, log_level="warning")))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        wait_until(lambda: self.client.get("/ready").status_code == 200 or self.no_champion_expected)
        return self

    no_champion_expected = False

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def predict(self, model: str, records: list[dict], **kwargs) -> httpx.Response:
        return self.client.post(f"/v1/models/{model}/predict", json={"records": records}, **kwargs)

    def champion(self, model: str) -> str | None:
        found = self.client.get(f"/v1/models/{model}").json()["champion"]
        return found and found["version"]


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def serve(world: World, models: list[str] | None = None, **options) -> LiveServer:
    specs = [s for s in load_specs(world.specs_dir) if models is None or s.name in models]
    config = ServingConfig(home=world.home, specs=specs, tracker=Tracker.under(world.home / "mlflow"),
                           poll_seconds=options.pop("poll_seconds", 0.05), flush_seconds=0.1, **options)
    return LiveServer(config)


def records(rows: pd.DataFrame, columns: list[str]) -> list[dict]:
    plain = rows[columns].astype(object).where(rows[columns].notna(), None)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in plain.to_dict("records")]


def test_predictions_equal_the_registered_models_own_predict_by_batch_one_by_one_and_mlflow_payloads(world):
    rows = world.rows.head(60).copy()
    rows.loc[3, "x2"] = None  # a null the model imputes
    rows.loc[4, "color"] = None
    with serve(world, ["toy", "toy_bin"]) as server:
        spec = world.spec("toy")
        expected = world.pipeline("toy", "1").predict(split_xy(rows, spec)[0])
        batch = server.predict("toy", records(rows, ["id", "x1", "x2", "color"]))
        assert batch.status_code == 200, batch.text
        body = batch.json()
        answers = body["predictions"]
        np.testing.assert_allclose([a["prediction"] for a in answers], expected, rtol=1e-12)
        assert {(a["version"], a["role"], a["request_id"]) for a in answers} == {("1", "champion", body["request_id"])}
        assert [a["key"] for a in answers] == [{"id": int(i)} for i in rows["id"]]
        assert [a["index"] for a in answers] == list(range(len(rows)))

        singles = [server.predict("toy", [r]).json()["predictions"][0]["prediction"]
                   for r in records(rows.head(10), ["id", "x1", "x2", "color"])]
        np.testing.assert_allclose(singles, [a["prediction"] for a in answers[:10]], rtol=1e-12)  # BLAS order

        split = {"columns": ["x1", "x2", "color"], "data": rows[["x1", "x2", "color"]].astype(object)
                 .where(rows[["x1", "x2", "color"]].notna(), None).values.tolist()}
        for payload in ({"dataframe_records": records(rows, ["x1", "x2", "color"])}, {"dataframe_split": split}):
            mlflow_answer = server.client.post("/v1/models/toy/invocations", json=payload)
            assert mlflow_answer.status_code == 200, mlflow_answer.text
            assert list(mlflow_answer.json()) == ["predictions"]
            np.testing.assert_allclose(mlflow_answer.json()["predictions"], expected, rtol=1e-12)

        classifier = world.pipeline("toy_bin", "1")
        x_bin = split_xy(rows, world.spec("toy_bin"))[0]
        x_bin["color"] = x_bin["color"].fillna("red")  # toy_bin's color may be null; x1 may not
        binary_body = server.predict("toy_bin", records(x_bin, ["x1", "x2", "color"])).json()
        binary = binary_body["predictions"]
        assert [a["prediction"] for a in binary] == list(classifier.predict(x_bin))
        np.testing.assert_allclose([[a["probabilities"]["no"], a["probabilities"]["yes"]] for a in binary],
                                   classifier.predict_proba(x_bin), rtol=1e-12)
        mlflow_labels = server.client.post("/v1/models/toy_bin/invocations",
                                           json={"dataframe_records": records(x_bin, ["x1", "x2", "color"])})
        assert mlflow_labels.json() == {"predictions": list(classifier.predict(x_bin))}
    logged = read_prediction_log(world.home, "toy_bin")
    logged = logged[logged["request_id"] == binary_body["request_id"]].sort_values("record_index")
    assert [json.loads(p) for p in logged["probabilities"]] == [a["probabilities"] for a in binary]
    assert list(logged["label"]) == [a["prediction"] for a in binary]
    np.testing.assert_array_equal(logged["x1"], x_bin["x1"])
    assert list(logged["color"]) == list(x_bin["color"])


def feature_rows(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": np.arange(n), "x1": rng.uniform(0, 10, n).round(3), "x2": rng.normal(0, 1, n).round(3),
                         "color": rng.choice(["red", "green", "blue"], n), "y": 0.0})  # y: split_xy wants a target


def test_canary_share_follows_the_spec_and_one_entity_always_sees_one_version(world):
    world.aliases("toy_canary", "1", "2")
    rows = feature_rows(2000)
    spec = world.spec("toy_canary")
    with serve(world, ["toy_canary"]) as server:
        answers = []
        for start in range(0, len(rows), 500):
            response = server.predict("toy_canary", records(rows.iloc[start:start + 500], ["id", "x1", "x2", "color"]))
            assert response.status_code == 200, response.text
            answers += response.json()["predictions"]
        roles = np.array([a["role"] for a in answers])
        assert (roles == CANARY_ROLE).mean() == pytest.approx(0.20, abs=0.03)
        assert {(a["role"], a["version"]) for a in answers} == {("champion", "1"), ("canary", "2")}
        assert list(roles) == [role_for(f"k:{i}", 20) for i in rows["id"]]  # the documented hash, nothing else
        x = split_xy(rows, spec)[0]
        expected = np.where(roles == CANARY_ROLE, world.pipeline("toy_canary", "2").predict(x),
                            world.pipeline("toy_canary", "1").predict(x))
        np.testing.assert_allclose([a["prediction"] for a in answers], expected, rtol=1e-9)

        again = rows.sample(200, random_state=3).copy()
        again["x1"] = 5.0  # other inputs, same entities, one request each, in another order
        for record in records(again, ["id", "x1", "x2", "color"]):
            answer = server.predict("toy_canary", [record]).json()["predictions"][0]
            assert answer["role"] == roles[record["id"]]
        keyless = [{"x1": 1.0, "x2": 0.0, "color": "red", "_id": f"row-{i}"} for i in range(300)]
        first = [a["role"] for a in server.predict("toy_canary", keyless).json()["predictions"]]
        second = [a["role"] for a in server.predict("toy_canary", keyless[::-1]).json()["predictions"]][::-1]
        assert first == second and CANARY_ROLE in first


def test_shadow_scores_every_request_off_the_response_path_and_logs_it_as_shadow(world):
    world.aliases("toy_shadow", "1", "2")
    rows = feature_rows(100, seed=5)
    spec = world.spec("toy_shadow")
    x = split_xy(rows, spec)[0]
    with serve(world, ["toy_shadow"]) as server:
        assert server.client.get("/v1/models/toy_shadow").json()["rollout"]["active"] == "shadow"
        request_ids, answers = [], []
        for start in range(0, 100, 20):
            body = server.predict("toy_shadow", records(rows.iloc[start:start + 20], ["id", "x1", "x2", "color"])).json()
            request_ids.append(body["request_id"])
            answers += body["predictions"]
    assert {(a["role"], a["version"]) for a in answers} == {("champion", "1")}
    np.testing.assert_allclose([a["prediction"] for a in answers], world.pipeline("toy_shadow", "1").predict(x),
                               rtol=1e-9)
    logged = read_prediction_log(world.home, "toy_shadow")
    logged = logged[logged["request_id"].isin(request_ids)]
    shadow = logged[logged["role"] == "shadow"].sort_values(["request_id", "record_index"])
    champion = logged[logged["role"] == "champion"]
    assert len(champion) == 100 and len(shadow) == 100
    assert set(shadow["version"]) == {"2"} and set(champion["version"]) == {"1"}
    order = {rid: n for n, rid in enumerate(request_ids)}
    shadow = shadow.assign(n=shadow["request_id"].map(order)).sort_values(["n", "record_index"])
    np.testing.assert_allclose(shadow["score"], world.pipeline("toy_shadow", "2").predict(x), rtol=1e-9)
    np.testing.assert_allclose(shadow["x1"], rows["x1"])


def test_alias_moves_under_load_fail_no_request_and_every_answer_comes_from_a_version_in_effect(world):
    """Version v_i is in effect from the moment its alias is set (t_i) until the service confirms the next move
    (c_{i+1}, read from /v1/models). An answer is right when its version was in effect at some moment between the
    request being sent and the answer arriving."""
    world.aliases("toy", "1")
    record = {"id": 1, "x1": 3.0, "x2": 0.5, "color": "green"}
    results: list[tuple[float, float, int, str | None]] = []
    stop = threading.Event()
    with serve(world, ["toy"], poll_seconds=0.02) as server:

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        response = http.post("/v1/models/toy/predict", json={"records": [record]})
                        version = response.json()["predictions"][0]["version"] if response.status_code == 200 else None
                        results.append((sent, time.monotonic(), response.status_code, version))
                    except httpx.HTTPError:
                        results.append((sent, time.monotonic(), 0, None))

        clients = [threading.Thread(target=client) for _ in range(3)]
        for thread in clients:
            thread.start()
        moves = [(-np.inf, -np.inf, "1")]
        for version in ["2", "3", "1"] * 8:
            set_at = time.monotonic()
            world.tracker.set_alias("toy", CHAMPION, version)
            wait_until(lambda version=version: server.champion("toy") == version)
            moves.append((set_at, time.monotonic(), version))
            time.sleep(0.05)
        stop.set()
        for thread in clients:
            thread.join()
    assert len(moves) == 25 and len(results) > 100
    assert [r for r in results if r[2] != 200] == []
    for sent, received, _, version in results:
        in_effect = {v for i, (set_at, _, v) in enumerate(moves)
                     if set_at <= received and (i + 1 == len(moves) or moves[i + 1][1] >= sent)}
        assert version in in_effect, (sent, received, version)
    assert {r[3] for r in results} == {"1", "2", "3"}


def test_a_version_whose_gates_failed_is_never_served_even_when_an_alias_points_at_it(world):
    world.aliases("toy", "1")
    try:
        with serve(world, ["toy"]) as server:
            world.tracker.set_alias("toy", CHAMPION, "4")
            wait_until(lambda: "4" in server.client.get("/v1/models/toy").json()["refused_versions"])
            listing = server.client.get("/v1/models/toy").json()
            assert listing["aliases"]["champion"] == "4" and listing["champion"] == {"version": "1", "forced": False}
            assert "gates tag is 'failed'" in listing["refused_versions"]["4"]
            answer = server.predict("toy", [{"id": 1, "x1": 1.0, "x2": 1.0, "color": "red"}]).json()
            assert answer["predictions"][0]["version"] == "1"

        starting = serve(world, ["toy"])
        starting.no_champion_expected = True
        with starting as server:  # started with the alias already on the failed version: nothing to serve
            wait_until(lambda: server.client.get("/v1/models/toy").json()["checked_at"] is not None)
            assert server.client.get("/ready").status_code == 503
            refused = server.predict("toy", [{"id": 1, "x1": 1.0, "x2": 1.0, "color": "red"}])
            assert refused.status_code == 503 and "4" in refused.json()["refused_versions"]
    finally:
        world.aliases("toy", "1")


JSON_HEADERS = {"content-type": "application/json"}


def test_scoring_routes_refuse_bodies_that_are_not_json_and_log_nothing_of_them(world):
    """A web page can POST text/plain, a form or a typeless body to the service without a CORS preflight: each is
    a 415 naming what was sent, and none of them reaches the prediction log; JSON with a charset is scored."""
    body = json.dumps({"records": [{"id": 1, "x1": 1.0, "x2": 1.0, "color": "red"}]}).encode()
    refused = {"csrf-plain": "text/plain", "csrf-form": "application/x-www-form-urlencoded",
               "csrf-multipart": "multipart/form-data; boundary=x", "csrf-none": None}
    with serve(world, ["toy"]) as server:
        for request_id, content_type in refused.items():
            headers = {"X-Request-ID": request_id, **({"content-type": content_type} if content_type else {})}
            for route in ("predict", "invocations", "explain"):
                answer = server.client.post(f"/v1/models/toy/{route}", content=body, headers=headers)
                assert answer.status_code == 415, (route, content_type, answer.text)
                assert answer.json()["accepted"] == "application/json"
                assert (content_type or "no Content-Type") in answer.json()["error"]
        accepted = server.client.post("/v1/models/toy/predict", content=body, headers={
            "X-Request-ID": "csrf-ok", "content-type": "Application/JSON; charset=utf-8"})
        assert accepted.status_code == 200, accepted.text
    logged = set(read_prediction_log(world.home, "toy")["request_id"])
    assert "csrf-ok" in logged and not logged & set(refused)


def test_bad_requests_get_a_4xx_naming_the_problem(world):
    good = {"id": 1, "x1": 1.0, "x2": 1.0, "color": "red"}
    with serve(world, ["toy", "toy_bin"], max_batch=10) as server:
        post = server.client.post
        missing = post("/v1/models/nope/predict", json={"records": [good]})
        assert missing.status_code == 404 and missing.json()["served"] == ["toy", "toy_bin"]
        assert post("/v1/models/toy/predict", content=b'{"records": [', headers=JSON_HEADERS).status_code == 400
        assert post("/v1/models/toy/predict", content=b'{"records": [{"x1": NaN}]}', headers=JSON_HEADERS).status_code == 400
        assert post("/v1/models/toy/predict", content=b"\xff\xfe\x00", headers=JSON_HEADERS).status_code == 400
        too_many = post("/v1/models/toy/predict", json={"records": [good] * 11})
        assert too_many.status_code == 413 and too_many.json()["max_batch"] == 10
        huge = post("/v1/models/toy/predict", content=b'{"records": [' + b" " * 200_000 + b"]}", headers=JSON_HEADERS)
        assert huge.status_code == 413 and "request body above" in huge.json()["error"]
        assert server.client.get("/v1/models/toy/predict").status_code == 405
        assert post("/v1/models/toy/predict", json=[good]).status_code == 422
        assert post("/v1/models/toy/predict", json={"records": []}).status_code == 422

        def problems(model: str, record: dict) -> list[dict]:
            response = server.predict(model, [good, record])
            assert response.status_code == 422, response.text
            return response.json()["problems"]

        (high,) = problems("toy", {**good, "x1": 11})
        assert (high["record"], high["field"], high["found"]) == (1, "x1", "11")
        assert high["allowed"] == "a number between 0 and 10 or null"
        assert "is above the maximum 10" in high["message"]
        (colour,) = problems("toy", {**good, "color": "purple"})
        assert colour["field"] == "color" and "'blue', 'green', 'red'" in colour["allowed"]
        (text,) = problems("toy", {**good, "x2": "1.5"})
        assert text["field"] == "x2" and "must be a number" in text["message"]
        (absent,) = problems("toy", {"id": 1, "x1": 1.0, "color": "red"})
        assert absent["field"] == "x2" and absent["found"] == "(missing)"
        (null,) = problems("toy_bin", {"x1": None, "x2": 1.0, "color": "red"})
        assert null["field"] == "x1" and "must not be null" in null["message"]
        (huge,) = problems("toy", {**good, "x2": 10**400})
        assert huge["field"] == "x2" and "out of range" in huge["message"]
        assert len(problems("toy", {"x1": True, "x2": [1], "color": {"a": 1}, "id": [1]})) == 4
        bad_id = post("/v1/models/toy/predict", json={"records": [good]}, headers={"X-Request-ID": "no spaces"})
        assert bad_id.status_code == 422
        given_id = post("/v1/models/toy/predict", json={"records": [good]}, headers={"X-Request-ID": "abc-1"})
        assert given_id.json()["predictions"][0]["request_id"] == "abc-1"
        assert post("/v1/models/toy/invocations", json={"instances": [[1, 2]]}).status_code == 422
        split = {"dataframe_split": {"columns": ["x1", "x2", "color"], "data": [[1.0, 2.0]]}}
        assert post("/v1/models/toy/invocations", json=split).status_code == 422
        metrics = server.client.get("/metrics").text
        assert 'mlplatform_request_errors_total{model="toy",route="predict",status="422"}' in metrics
        assert 'mlplatform_requests_total{model="(unknown)",route="predict",status="404"} 1.0' in metrics
        assert 'status="500"' not in metrics


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
FEATURE = st.one_of(JSON, st.sampled_from(["red", "green", "blue", "True", ""]), st.floats(-1, 11),
                    st.integers(-(10**30), 10**30))
RECORD = st.one_of(
    st.fixed_dictionaries({}, optional={"id": JSON, "x1": FEATURE, "x2": FEATURE, "color": FEATURE, "_id": JSON,
                                        "extra": JSON}),
    JSON,
)
PAYLOAD = st.one_of(
    st.fixed_dictionaries({"records": st.lists(RECORD, max_size=4)}),
    st.fixed_dictionaries({"dataframe_records": st.lists(RECORD, max_size=4)}),
    st.fixed_dictionaries({"dataframe_split": st.fixed_dictionaries(
        {"columns": st.lists(st.sampled_from(["x1", "x2", "color", "id", "zz"]), max_size=4),
         "data": st.lists(st.lists(FEATURE, max_size=4), max_size=3)})}),
    JSON,
)


def test_fuzzed_requests_never_get_a_500(world):
    with serve(world, ["toy", "toy_bin"]) as server:

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(model=st.sampled_from(["toy", "toy_bin", "nope"]), route=st.sampled_from(["predict", "invocations"]),
               body=st.one_of(PAYLOAD.map(lambda p: json.dumps(p).encode()), st.binary(max_size=40)))
        def check(model: str, route: str, body: bytes) -> None:
            response = server.client.post(f"/v1/models/{model}/{route}", content=body,
                                          headers={"content-type": "application/json"})
            assert response.status_code in (200, 400, 404, 413, 422), (response.status_code, response.text, body)
            if response.status_code == 200:
                values = response.json()["predictions"]
                numbers = [v["prediction"] if isinstance(v, dict) else v for v in values]
                assert all(isinstance(n, str) or np.isfinite(n) for n in numbers)

        check()
        assert 'status="500"' not in server.client.get("/metrics").text


def test_a_policy_latency_budget_is_reported_beside_the_measured_p99(world, tmp_path, monkeypatch):
    """GET /v1/models and /metrics hold each model's recent p99 against its policy's budget: within a generous
    budget, over an impossible one; a model under no budget reports its p99 and no verdict."""
    good = records(feature_rows(1), ["id", "x1", "x2", "color"])
    for budget_ms, within in ((10_000.0, True), (0.001, False)):
        policies = tmp_path / f"policies-{budget_ms}.yaml"
        policies.write_text(f"default: served\npolicies:\n  served: {{latency_budget_p99_ms: {budget_ms}}}\n")
        monkeypatch.setenv("MLPLATFORM_POLICIES", str(policies))
        with serve(world, ["toy"]) as server:
            before = server.client.get("/v1/models/toy").json()["latency"]
            assert before == {"budget_p99_ms": budget_ms, "p99_ms": None, "requests": 0, "within_budget": None}
            round_trips = []
            for _ in range(30):
                started = time.perf_counter()
                assert server.predict("toy", good).status_code == 200
                round_trips.append((time.perf_counter() - started) * 1000)
            latency = server.client.get("/v1/models/toy").json()["latency"]
            assert latency["requests"] == 30 and latency["within_budget"] is within
            assert 0 < latency["p99_ms"] <= max(round_trips)  # the server's share of what the client waited
            metrics = server.client.get("/metrics").text
            assert f'mlplatform_latency_budget_p99_seconds{{model="toy"}} {budget_ms / 1000}' in metrics
            assert 'mlplatform_latency_p99_seconds{model="toy"}' in metrics
    monkeypatch.delenv("MLPLATFORM_POLICIES")
    with serve(world, ["toy"]) as server:
        assert server.predict("toy", good).status_code == 200
        latency = server.client.get("/v1/models/toy").json()["latency"]
        assert latency["budget_p99_ms"] is None and latency["p99_ms"] > 0 and latency["within_budget"] is None


def test_listing_readiness_metrics_and_openapi(world):
    world.aliases("toy_canary", "1", "2")
    with serve(world, ["toy", "toy_canary"]) as server:
        assert server.client.get("/health").json() == {"status": "ok"}
        assert server.client.get("/ready").json()["models"] == {"toy": "1", "toy_canary": "1"}
        server.predict("toy_canary", records(feature_rows(50), ["id", "x1", "x2", "color"]))
        listing = {m["name"]: m for m in server.client.get("/v1/models").json()["models"]}
        canary = listing["toy_canary"]
        assert canary["champion"] == {"version": "1", "forced": False}
        assert canary["challenger"] == {"version": "2", "forced": False}
        assert canary["rollout"] == {"canary_percent": 20, "canary_share": 20.0, "ramp": [], "shadow": False,
                                     "min_canary_percent": None, "active": "canary", "challenger_version": "2"}
        assert canary["features"]["properties"]["x1"] == {"type": ["number", "null"], "minimum": 0.0, "maximum": 10.0}
        assert canary["features"]["required"] == ["x1", "x2", "color"] and canary["key"] == ["id"]
        assert listing["toy"]["rollout"]["active"] == "none" and listing["toy"]["refused_versions"] == {}
        metrics = server.client.get("/metrics").text
        assert 'mlplatform_requests_total{model="toy_canary",route="predict",status="200"} 1.0' in metrics
        assert 'mlplatform_predictions_total{model="toy_canary",role="canary",version="2"}' in metrics
        assert 'mlplatform_prediction_latency_seconds_bucket{le="0.01",model="toy_canary",role="champion",version="1"}' \
            in metrics
        assert "mlplatform_prediction_log_backlog_rows" in metrics
        assert 'mlplatform_served_version{model="toy",role="champion",version="1"} 1.0' in metrics
        openapi = server.client.get("/openapi.json").json()
        body = openapi["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["required"] == ["records"]
        assert server.client.get("/docs").status_code == 200


def test_when_the_registry_becomes_unreachable_the_service_keeps_serving_what_it_has(world, monkeypatch):
    from mlplatform.serving.models import Registry

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    world.aliases("toy", "1")
    with serve(world, ["toy"]) as server:
        app = server.server.config.app
        app.state.runtime.watcher.registry = Registry(Tracker(f"http://127.0.0.1:{free_port()}", None))
        wait_until(lambda: server.client.get("/v1/models/toy").json()["registry_error"] is not None)
        assert server.client.get("/ready").status_code == 200
        answer = server.predict("toy", [{"id": 1, "x1": 1.0, "x2": 1.0, "color": "red"}])
        assert answer.status_code == 200 and answer.json()["predictions"][0]["version"] == "1"


def test_the_poller_reads_the_registry_only_when_it_changed_and_still_sees_every_move(world):
    from mlplatform.serving.models import Registry

    world.aliases("toy", "1")
    registry = Registry(Tracker.under(world.home / "mlflow"))
    token = registry.change_token()
    assert token is not None and registry.change_token() == token  # nothing written: the same token
    world.aliases("toy", "2")
    assert registry.change_token() != token  # any commit to the store changes it
    registry.close()
    assert Registry(Tracker(f"http://127.0.0.1:{free_port()}", None)).change_token() is None  # a server: always read

    with serve(world, ["toy"]) as server:
        watcher = server.server.config.app.state.runtime.watcher
        wait_until(lambda: watcher.skipped_polls >= 3)  # polls every 0.05 s, reads only after a write
        world.aliases("toy", "3")
        wait_until(lambda: server.champion("toy") == "3")
        assert server.predict("toy", [{"id": 1, "x1": 1.0, "x2": 1.0, "color": "red"}]).json()[
            "predictions"][0]["version"] == "3"
    world.aliases("toy", "1")


def test_one_registry_request_per_poll_reads_the_aliases_of_every_served_model(world):
    """A replica's poll costs a tracking server one request whatever the number of models, and still sees each
    model's own aliases (a model the registry does not know has none)."""
    from mlplatform.serving.models import ModelWatcher, Registry

    specs = [world.spec(name) for name in ("toy", "toy_canary", "toy_shadow", "toy_bin", "toy_steep")]
    registry = Registry(Tracker.under(world.home / "mlflow"))
    world.aliases("toy", "3")
    watcher = ModelWatcher(specs, registry, poll_seconds=60)
    try:
        state = watcher.refresh()
        assert registry.requests == 1
        assert {name: (m.aliases.get(CHAMPION), m.aliases.get(CHALLENGER)) for name, m in state.models.items()} == {
            "toy": ("3", None), "toy_canary": ("1", "2"), "toy_shadow": ("1", "2"), "toy_bin": ("1", None),
            "toy_steep": ("1", "2")}
        assert state.models["toy"].champion.version == "3"
        assert registry.aliases_of(["not_registered", "toy"]) == {"not_registered": {}, "toy": {CHAMPION: "3"}}
        assert registry.requests == 2
    finally:
        watcher.stop()
        world.aliases("toy", "1")


def test_replay_sends_a_week_of_feature_rows_as_traffic(world, capsys):
    from mlplatform.cli import main

    world.aliases("toy", "1")
    began = utc_now()
    with serve(world, ["toy", "toy_bin"]) as server:
        assert main(["replay", "toy", "--start", "2024-01-08", "--url", server.url, "--batch", "15"]) == 0
        assert "sent 40, answered 40, failed requests 0" in capsys.readouterr().out
        assert main(["replay", "toy_bin", "--start", "2024-01-15", "--url", server.url]) == 0
        assert main(["replay", "toy", "--start", "2024-01-08", "--url", "http://127.0.0.1:1"]) == 1
    toy = read_prediction_log(world.home, "toy", start=began)
    assert sorted(toy["entity_key"].astype(int)) == list(range(40, 80))  # the ids of that week
    keyless = read_prediction_log(world.home, "toy_bin", start=began)
    assert sorted(keyless["record_id"].astype(int)) == list(range(80, 120))  # source row numbers


def start_service(world: World, port: int, flush_seconds: float, specs_dir: Path | None = None,
                  extra: Sequence[str] = (), models: Sequence[str] = ("toy",)) -> subprocess.Popen:
    """`mlplatform serve` as its own process (what SIGTERM and SIGKILL are sent to)."""
    command = [sys.executable, "-m", "mlplatform.cli", "serve", "--port", str(port),
               *(arg for model in models for arg in ("--model", model)),
               "--flush-seconds", str(flush_seconds), "--poll-seconds", "0.5", "--log-level", "warning", *extra]
    env = {**os.environ, "MLPLATFORM_HOME": str(world.home), "MLPLATFORM_SPECS": str(specs_dir or world.specs_dir)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "service did not become ready"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)


def load_until_stopped(port: int, prefix: str, stop_after: int, stop: Callable[[], None]) -> tuple[set, set]:
    """Clients send 1-record requests with their own request ids; ``stop`` is called after ``stop_after`` answers."""
    answered, failed = set(), set()
    lock = threading.Lock()
    done = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for i in range(100_000):
                request_id = f"{prefix}-{n}-{i}"
                try:
                    response = http.post("/v1/models/toy/predict", headers={"X-Request-ID": request_id},
                                         json={"records": [{"id": i, "x1": 1.0, "x2": 0.0, "color": "red"}]})
                except httpx.HTTPError:
                    with lock:
                        failed.add(request_id)
                    if done.is_set():
                        return
                    continue
                with lock:
                    (answered if response.status_code == 200 else failed).add(request_id)
                    if len(answered) == stop_after and not done.is_set():
                        done.set()
                        stop()

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    return answered, failed


@pytest.mark.slow
def test_sigterm_in_the_middle_of_the_load_loses_no_logged_prediction(world):
    world.aliases("toy", "1")
    port = free_port()
    process = start_service(world, port, flush_seconds=0.5)
    answered, failed = load_until_stopped(port, "term", 400, lambda: process.send_signal(signal.SIGTERM))
    assert process.wait(timeout=60) in (0, -signal.SIGTERM), process.stdout.read()  # uvicorn re-raises the signal
    logged = read_prediction_log(world.home, "toy", expand_inputs=False)
    logged = set(logged.loc[logged["request_id"].str.startswith("term-"), "request_id"])
    assert len(answered) >= 400
    assert answered <= logged  # every answer is in the log
    assert logged <= answered | failed  # and nothing else


def test_sigterm_with_a_drain_period_leaves_the_balancer_first_then_stops(world):
    world.aliases("toy", "1")
    port = free_port()
    process = start_service(world, port, flush_seconds=0.5, extra=["--drain-seconds", "3"])
    url = f"http://127.0.0.1:{port}"
    record = {"records": [{"id": 1, "x1": 1.0, "x2": 0.0, "color": "red"}]}
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            before = http.post("/v1/models/toy/predict", json=record)
            assert before.status_code == 200 and before.headers.get("connection") != "close"  # kept alive
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while http.get("/ready").status_code == 200:  # the signal is handled within the event loop's tick
                assert time.monotonic() < deadline, "/ready kept answering 200 after SIGTERM"
                time.sleep(0.05)
            ready = http.get("/ready")
            assert ready.status_code == 503 and ready.json()["draining"] is True
            during = http.post("/v1/models/toy/predict", json=record)  # still served while the balancer reacts
            assert during.status_code == 200, during.text
            assert during.headers["connection"] == "close"  # and no connection is kept to a stopping replica
            assert process.poll() is None
    finally:
        assert process.wait(timeout=60) in (0, -signal.SIGTERM), process.stdout.read()
    refused = subprocess.run([sys.executable, "-m", "mlplatform.cli", "serve", "--drain-seconds", "-1"],
                             capture_output=True, text=True, env={**os.environ, "MLPLATFORM_HOME": str(world.home)})
    assert refused.returncode == 1 and "--drain-seconds must be" in refused.stderr


def test_serve_needs_no_training_data_on_its_disk_while_validate_still_checks_it(world, tmp_path, capsys):
    from mlplatform.cli import main

    specs_dir = tmp_path / "serving-host-specs"  # the spec alone: its source file toy.csv is not on this host
    specs_dir.mkdir()
    (specs_dir / "toy.yaml").write_text((world.specs_dir / "toy.yaml").read_text())
    world.aliases("toy", "1")
    port = free_port()
    process = start_service(world, port, flush_seconds=0.5, specs_dir=specs_dir)
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/models/toy/predict",
                            json={"records": [{"id": 1, "x1": 1.0, "x2": 0.0, "color": "red"}]}, timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["version"] == "1"
    saved = os.environ["MLPLATFORM_SPECS"]
    os.environ["MLPLATFORM_SPECS"] = str(specs_dir)
    try:
        assert main(["validate"]) == 1  # the data checks stay in `validate` (and the code location)
    finally:
        os.environ["MLPLATFORM_SPECS"] = saved
    error = capsys.readouterr().err
    assert "source.path" in error and "toy.csv" in error


def test_the_fast_preprocessing_twin_matches_the_pipeline_or_is_not_used(world):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from mlplatform.serving.fastpath import compile_preprocess
    from mlplatform.serving.models import LoadedModel
    from mlplatform.serving.schema import RecordSchema

    spec = world.spec("toy_bin")
    spec.estimator.class_name = "sklearn.ensemble.HistGradientBoostingClassifier"
    spec.estimator.params = {"max_iter": 10}
    x, y = split_xy(world.rows, spec)
    pipeline = build_pipeline(spec).fit(x, y)
    rows = feature_rows(300, seed=9)
    rows.loc[::7, "x2"] = None
    rows.loc[::5, "color"] = None
    rows.loc[::11, "color"] = "purple"  # unknown to the encoder (toy_bin's schema would refuse it; the twin must not)
    checked = [{"x1": r["x1"], "x2": None if pd.isna(r["x2"]) else r["x2"], "color": r["color"]}
               for r in records(rows, ["x1", "x2", "color"])]
    loaded = LoadedModel.of(spec, "t", pipeline)
    assert loaded.fast is not None
    frame = loaded.frame(checked)
    np.testing.assert_array_equal(loaded.fast.transform(checked), pipeline.named_steps["preprocess"].transform(frame))
    np.testing.assert_array_equal([o["probabilities"]["yes"] for o in loaded.predict(checked)],
                                  pipeline.predict_proba(frame)[:, 1])
    assert loaded.trees is not None  # the flat tree twin answers small requests: the same numbers, bit for bit
    small = [o["probabilities"]["yes"] for start in range(0, 300, 5) for o in loaded.predict(checked[start:start + 5])]
    np.testing.assert_array_equal(small, pipeline.predict_proba(frame)[:, 1])

    regression = world.spec("toy")
    regression.estimator.class_name = "sklearn.ensemble.HistGradientBoostingRegressor"
    regression.estimator.params = {"max_iter": 15}
    x_reg, y_reg = split_xy(world.rows, regression)
    regressor = build_pipeline(regression).fit(x_reg, y_reg)
    loaded_regressor = LoadedModel.of(regression, "r", regressor)
    assert loaded_regressor.trees is not None
    one_by_one = [loaded_regressor.predict([row])[0]["prediction"] for row in checked[:40]]
    np.testing.assert_array_equal(one_by_one, regressor.predict(loaded_regressor.frame(checked[:40])))

    scaled = Pipeline([("preprocess", pipeline.named_steps["preprocess"]), ("scale", StandardScaler()),
                       ("estimator", pipeline.named_steps["estimator"])])
    assert compile_preprocess(scaled, spec.features.numeric, spec.features.categorical) is None
    assert compile_preprocess(pipeline, ["x2", "x1"], spec.features.categorical) is None  # other column order
    assert RecordSchema(spec).feature_names == ["x1", "x2", "color"]


def strict_json(text: str):
    """Parse as standard JSON does: Infinity and NaN are not JSON."""

    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_prediction_that_is_not_finite_is_a_422_naming_the_record_on_every_route_and_is_never_logged(world):
    good = {"id": 1, "x1": 1.0, "x2": 0.5, "color": "red"}
    with serve(world, ["toy_steep"]) as server:
        post = server.client.post
        finite = post("/v1/models/toy_steep/predict", json={"records": [good]}, headers={"X-Request-ID": "finite-1"})
        assert finite.status_code == 200 and np.isfinite(strict_json(finite.text)["predictions"][0]["prediction"])
        for n, x2 in enumerate([1e308, -1e308]):  # allowed by the spec (x2 has no min/max); 4 * x2 overflows
            overflowing = {**good, "id": 2, "x2": x2}
            for route, body in (("predict", {"records": [good, overflowing]}),
                                ("invocations", {"dataframe_records": [good, overflowing]}),
                                ("explain", {"records": [good, overflowing]})):
                response = post(f"/v1/models/toy_steep/{route}", json=body, headers={"X-Request-ID": f"over-{n}-{route}"})
                assert response.status_code == 422, (route, response.text)
                answer = strict_json(response.text)
                assert answer["error"] == "the prediction is not finite"
                assert [p["record"] for p in answer["problems"]] == [1]  # the overflowing record, not the good one
                assert "record 1: the prediction is not finite" in answer["problems"][0]["message"]
        shadowed = server.predict("toy_steep", [{**good, "x2": 1e307}], headers={"X-Request-ID": "shadow-over"})
        assert shadowed.status_code == 200  # the champion's answer is finite; its shadow's (40 x2) is not
        metrics = server.client.get("/metrics").text
        assert 'mlplatform_request_errors_total{model="toy_steep",route="explain",status="422"} 2.0' in metrics
        assert 'status="500"' not in metrics
        wait_until(lambda: 'mlplatform_shadow_dropped_records_total{model="toy_steep"} 1.0'
                   in server.client.get("/metrics").text)
    logged = read_prediction_log(world.home, "toy_steep", expand_inputs=False)
    roles = set(zip(logged["request_id"], logged["role"], strict=True))
    assert {("finite-1", "champion"), ("finite-1", "shadow"), ("shadow-over", "champion")} <= roles
    assert ("shadow-over", "shadow") not in roles  # the log was written, and holds nothing non-finite
    assert not logged["request_id"].str.startswith("over-").any()
    assert np.isfinite(logged["score"].astype(float)).all()


def test_an_entity_key_above_the_length_limit_is_a_422_and_is_neither_echoed_nor_logged(world):
    from mlplatform.serving.schema import MAX_KEY_CHARS

    world.aliases("toy", "1")
    good = {"x1": 1.0, "x2": 0.5, "color": "red"}
    with serve(world, ["toy"]) as server:
        longest = "k" * MAX_KEY_CHARS
        kept = server.predict("toy", [{**good, "id": longest}], headers={"X-Request-ID": "key-ok"})
        assert kept.status_code == 200 and kept.json()["predictions"][0]["key"] == {"id": longest}
        for n, key in enumerate(["k" * 100_000, "k" * (MAX_KEY_CHARS + 1), 10 ** MAX_KEY_CHARS]):
            response = server.predict("toy", [{**good, "id": 1}, {**good, "id": key}],
                                      headers={"X-Request-ID": f"key-long-{n}"})
            assert response.status_code == 422, response.text
            (problem,) = response.json()["problems"]
            assert (problem["record"], problem["field"]) == (1, "id")
            assert f"at most {MAX_KEY_CHARS} characters" in problem["message"]
            assert len(response.content) < 2000  # the key is not echoed back
            explained = server.client.post("/v1/models/toy/explain", json={"records": [{**good, "id": key}]})
            assert explained.status_code == 422 and explained.json()["problems"][0]["field"] == "id"
    logged = read_prediction_log(world.home, "toy", expand_inputs=False)
    assert "key-ok" in set(logged["request_id"])
    assert not logged["request_id"].str.startswith("key-long").any()
    assert logged["entity_key"].dropna().str.len().max() <= MAX_KEY_CHARS + 2  # JSON quotes around a text key


def _answer_until_closed(sock: socket.socket, drip: bytes = b"") -> bytes:
    """Read what the server answers until it closes the connection (at most ~60 s); meanwhile send ``drip``."""
    received = b""
    sock.settimeout(0.1)
    for _ in range(600):
        if drip:
            try:
                sock.sendall(drip)
            except OSError:  # the server closed its side
                drip = b""
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset: the server closed with our unread bytes in its buffer (TCP sends RST then), a close
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the connection was not closed; received {received!r}")


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_connection_is_closed(world):
    world.aliases("toy", "1")
    head = ("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    with serve(world, ["toy"], body_timeout_seconds=0.5) as server:
        for path in ("/v1/models/toy/predict", "/v1/models/toy/invocations", "/v1/models/toy/explain",
                     "/v1/models/nope/predict"):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(head.format(path=path).encode() + b'{"records": [')  # and then nothing
                answer = _answer_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"did not arrive within 0.5 s" in answer and b"connection: close" in answer.lower()

        with socket.create_connection(("127.0.0.1", server.port)) as sock:  # a byte at a time, each in time
            sock.sendall(head.format(path="/v1/models/toy/predict").encode())
            assert _answer_until_closed(sock, drip=b" ").startswith(b"HTTP/1.1 408 ")

        with socket.create_connection(("127.0.0.1", server.port)) as sock:  # no scoring route: answered and closed
            sock.sendall(head.format(path="/v1/models/toy/nothing").encode() + b"{")
            assert _answer_until_closed(sock).startswith((b"HTTP/1.1 404 ", b"HTTP/1.1 405 "))

        assert server.predict("toy", [{"id": 1, "x1": 1.0, "x2": 0.5, "color": "red"}]).status_code == 200
        metrics = server.client.get("/metrics").text
        assert 'mlplatform_request_errors_total{model="toy",route="predict",status="408"} 2.0' in metrics


@pytest.mark.slow
def test_a_forced_champion_is_what_the_service_answers_with_before_and_after_a_restart(world, capsys):
    """`promote --force` onto a gate-failed version: the audit, the registry and the running service agree."""
    from mlplatform.cli import main
    from mlplatform.lib.audit import alias_history
    from mlplatform.lib.servability import FORCED_AT_TAG, FORCED_BY_TAG, FORCED_OVERRIDE_TAG, FORCED_REASON_TAG
    from mlplatform.lib.settings import load_settings

    world.aliases("toy", "1")
    world.tracker.set_version_tag("toy", "4", "gate.threshold", "failed")  # v4: gates=failed, the threshold gate
    record = {"id": 7, "x1": 3.0, "x2": 0.5, "color": "green"}
    expected = world.pipeline("toy", "4").predict(split_xy(pd.DataFrame([{**record, "y": 0.0}]), world.spec("toy"))[0])
    port = free_port()
    process = start_service(world, port, flush_seconds=0.2)
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{url}/v1/models/toy/predict", json={"records": [record]}).json()[
            "predictions"][0]["version"] == "1"
        capsys.readouterr()
        assert main(["promote", "toy", "--version", "4", "--by", "carol", "--reason", "incident 12", "--force"]) == 0
        err = capsys.readouterr().err
        assert "warning: toy v4 is champion by force, overriding gates=failed (threshold)" in err

        def answering_version() -> str:
            return httpx.post(f"{url}/v1/models/toy/predict", json={"records": [record]}).json()[
                "predictions"][0]["version"]

        wait_until(lambda: answering_version() == "4")
        answer = httpx.post(f"{url}/v1/models/toy/predict", json={"records": [record]}).json()["predictions"][0]
        np.testing.assert_allclose(answer["prediction"], expected[0], rtol=1e-12)
        shown = httpx.get(f"{url}/v1/models").json()["models"][0]["champion"]
        assert shown == {"version": "4", "forced": True, "forced_by": "carol", "forced_reason": "incident 12",
                         "forced_override": "gates=failed (threshold)"}

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        with serve(world, ["toy"]) as restarted:  # a fresh service reads the registry from scratch: ready, serving v4
            assert restarted.predict("toy", [record]).json()["predictions"][0]["version"] == "4"
            assert restarted.client.get("/v1/models/toy").json()["champion"]["forced"] is True

        with duckdb.connect(str(load_settings().warehouse_path)) as connection:
            history = alias_history(connection, "toy")
        last = history.iloc[-1]
        assert (last["alias"], last["version"], last["actor"]) == ("champion", "4", "carol")  # what production serves
        assert last["reason"] == "incident 12 [forced with --force: gates=failed (threshold)]"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        world.aliases("toy", "1")
        for key in ("gate.threshold", FORCED_BY_TAG, FORCED_REASON_TAG, FORCED_OVERRIDE_TAG, FORCED_AT_TAG):
            if key in world.tracker.version_tags("toy", "4"):
                world.tracker.delete_version_tag("toy", "4", key)


def test_serve_and_the_cli_survive_another_team_s_broken_spec(world, tmp_path, monkeypatch, capsys):
    """Team fraud's broken spec beside team ads's toy: `serve` (every model) starts, warns naming the broken file,
    key and fix, and answers toy over HTTP; `card toy` works; a command naming the broken model is refused with its
    problem; `validate` stays strict."""
    from mlplatform.cli import main

    root = tmp_path / "specs"
    (root / "fraud").mkdir(parents=True)
    for name in ("toy.yaml", "toy.csv"):
        (root / name).write_text((world.specs_dir / name).read_text())
    broken = root / "fraud" / "score.yaml"
    broken.write_text(textwrap.dedent(TOY_SPEC).replace("name: toy", "name: score") + "gates: {metric: rmse, threshhold: 1}\n")
    world.aliases("toy", "1")
    port = free_port()
    process = start_service(world, port, flush_seconds=0.5, specs_dir=root, models=())
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/models/toy/predict", timeout=30,
                            json={"records": [{"id": 1, "x1": 1.0, "x2": 0.0, "color": "red"}]})
        assert answer.status_code == 200, answer.text
        assert [m["name"] for m in httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()["models"]] == ["toy"]
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    assert "1 broken spec file(s) left out" in output
    assert f"{broken}: gates.threshhold:" in output and "did you mean 'threshold'" in output

    monkeypatch.setenv("MLPLATFORM_SPECS", str(root))
    capsys.readouterr()
    assert main(["card", "toy"]) == 0
    out, err = capsys.readouterr()
    assert "toy" in out and f"{broken}: gates.threshhold" in err
    assert main(["card", "score"]) == 1
    assert f"{broken}: gates.threshhold" in capsys.readouterr().err
    assert main(["validate"]) == 1
