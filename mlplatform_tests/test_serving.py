"""Serving end to end: real uvicorn on a free loopback port, real HTTP (httpx), a real MLflow registry (SQLite).

One temp home per module: toy models are trained and registered once (through ``Tracker``, as the pipeline does),
then each test starts its own server on it. Tests that move aliases put them back.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlplatform.lib.prediction_log import read_prediction_log
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
    rows.to_csv(specs_dir / "toy.csv", index=False)
    for name, rollout in ROLLOUT.items():
        text = textwrap.dedent(TOY_SPEC).replace("name: toy", f"name: {name}") + rollout + "\n"
        (specs_dir / f"{name}.yaml").write_text(text)
    (specs_dir / "toy_bin.yaml").write_text(textwrap.dedent(BINARY_SPEC))
    saved = {k: os.environ.get(k) for k in ("MLPLATFORM_HOME", "MLPLATFORM_SPECS")}
    os.environ["MLPLATFORM_HOME"], os.environ["MLPLATFORM_SPECS"] = str(home), str(specs_dir)
    tracker = Tracker.under(home / "mlflow")
    world = World(home, specs_dir, rows, tracker)
    for name in ("toy", "toy_canary", "toy_shadow", "toy_bin"):
        spec = world.spec(name)
        x, y = split_xy(rows, spec)
        versions = ALPHAS if name == "toy" else {"1": 0.1, "2": 1000.0} if name != "toy_bin" else {"1": 0.1}
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

    @property
    def runtime(self):
        return self.server.config.loaded_app.app.state.runtime if hasattr(self.server.config, "loaded_app") else None

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
        binary = server.predict("toy_bin", records(x_bin, ["x1", "x2", "color"])).json()["predictions"]
        assert [a["prediction"] for a in binary] == list(classifier.predict(x_bin))
        np.testing.assert_allclose([[a["probabilities"]["no"], a["probabilities"]["yes"]] for a in binary],
                                   classifier.predict_proba(x_bin), rtol=1e-12)
        mlflow_labels = server.client.post("/v1/models/toy_bin/invocations",
                                           json={"dataframe_records": records(x_bin, ["x1", "x2", "color"])})
        assert mlflow_labels.json() == {"predictions": list(classifier.predict(x_bin))}
