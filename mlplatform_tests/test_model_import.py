"""Bring an existing model (`mlplatform import`): the Iris scenario end to end (a pickle and a skops file imported,
gated, audited, promoted, served over real HTTP) and the refusals (wrong columns, pickle without the flag)."""

from __future__ import annotations

import hashlib
import pickle
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge

from mlplatform.cli import main
from mlplatform.lib.audit import read_events
from mlplatform.lib.model_import import ImportRefused, complete_weeks, input_problem, load_model_file
from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform.specs import load_specs

IRIS_SPEC = """
name: iris
task: multiclass
source:
  path: iris.csv
  timestamp: ts
  key: [id]
target: species
features:
  numeric: [sepal_length, sepal_width, petal_length, petal_width]
columns:
  species: {categories: [setosa, versicolor, virginica]}
partitions:
  start: 2024-01-01
  end: 2024-02-05
  training_window_weeks: 4
estimator:
  class: sklearn.tree.DecisionTreeClassifier
  params: {max_depth: 3}
gates:
  threshold: 0.8
rollout:
  approval: manual
"""
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_rows(weeks: int = 5, seed: int = 0) -> pd.DataFrame:
    """scikit-learn's Iris rows, shuffled and spread evenly over ``weeks`` Monday weeks from 2024-01-01."""
    data = load_iris(as_frame=True)
    frame = data.frame.rename(columns=dict(zip(data.feature_names, FEATURES, strict=True)))
    frame["species"] = np.asarray(data.target_names)[frame.pop("target")]
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    seconds = np.arange(len(frame)) * (weeks * 7 * 24 * 3600 / len(frame))
    frame.insert(0, "ts", (pd.Timestamp("2024-01-01") + pd.to_timedelta(seconds, unit="s")).strftime("%Y-%m-%d %H:%M:%S"))
    frame.insert(0, "id", np.arange(len(frame)))
    return frame


def first_weeks(rows: pd.DataFrame, weeks: int = 4) -> pd.DataFrame:
    """The rows a team trained on elsewhere: the weeks before the newest one."""
    return rows[pd.to_datetime(rows["ts"]) < pd.Timestamp("2024-01-01") + pd.Timedelta(weeks=weeks)]


@pytest.fixture
def iris(home, spec_dir) -> tuple[Path, pd.DataFrame]:
    rows = iris_rows()
    return spec_dir({"iris.yaml": IRIS_SPEC}, {"iris.csv": rows}), rows


def iris_spec(folder: Path):
    return next(s for s in load_specs(folder) if s.name == "iris")


def test_the_input_columns_must_be_the_specs_features(iris):
    folder, rows = iris
    spec = iris_spec(folder)
    train = first_weeks(rows)
    fitted = LogisticRegression(max_iter=500).fit(train[FEATURES], train["species"])
    assert input_problem(fitted, spec) is None
    renamed = train[FEATURES].rename(columns={"petal_width": "petal_w"})
    problem = input_problem(LogisticRegression(max_iter=500).fit(renamed, train["species"]), spec)
    assert "not in the model: ['petal_width']" in problem and "not features of the spec: ['petal_w']" in problem
    three = LogisticRegression(max_iter=500).fit(train[FEATURES[:3]].to_numpy(), train["species"])
    assert "takes 3 columns, the spec has 4 features" in input_problem(three, spec)
    regressor = Ridge().fit(train[FEATURES], np.arange(len(train)))
    assert "not a classifier" in input_problem(regressor, spec)
    assert "does not look fitted" in input_problem(LogisticRegression(), spec)


def test_the_platform_gives_the_model_its_columns_in_the_order_it_was_fitted_on(iris):
    from mlplatform.lib.model_import import platform_pipeline
    from mlplatform.lib.training import split_xy

    folder, rows = iris
    spec = iris_spec(folder)
    train, x = first_weeks(rows), split_xy(rows, spec)[0]
    reordered = FEATURES[::-1]
    by_name = LogisticRegression(max_iter=1000).fit(train[reordered], train["species"])
    wrapped = platform_pipeline(by_name, spec, x)
    assert [name for name, _ in wrapped.steps] == ["preprocess", "estimator"]
    assert list(wrapped.predict(x)) == list(by_name.predict(x[reordered]))
    by_position = LogisticRegression(max_iter=1000).fit(train[FEATURES].to_numpy(), train["species"])
    assert list(platform_pipeline(by_position, spec, x).predict(x)) == list(by_position.predict(x.to_numpy()))


def test_pickle_is_refused_without_the_flag_and_warned_with_it(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression()))
    with pytest.raises(ImportRefused, match="loading a pickle runs whatever code it holds.*--allow-pickle"):
        load_model_file(path)
    loaded = load_model_file(path, allow_pickle=True)
    assert loaded.file_format == "pickle" and "unpickling runs the code" in loaded.warnings[0]
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    other = tmp_path / "model.joblib"
    other.write_bytes(b"x")
    with pytest.raises(ImportRefused, match="unknown model file type '.joblib'"):
        load_model_file(other, allow_pickle=True)


def test_skops_refuses_types_it_does_not_trust_unless_named(tmp_path):
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "model.skops"
    skops.io.dump(FunctionTransformer(func=textwrap.dedent), path)  # a function outside scikit-learn/NumPy/SciPy
    with pytest.raises(ImportRefused, match=r"does not trust: textwrap\.dedent.*--trust TYPE"):
        load_model_file(path)
    assert load_model_file(path, trust=["textwrap.dedent"]).model.func is textwrap.dedent


def test_complete_weeks_end_at_the_partitions_end_or_today(iris):
    from datetime import date

    spec = iris_spec(iris[0])
    assert complete_weeks(spec, date(2030, 1, 1))[-1] == "2024-01-29"
    assert complete_weeks(spec, date(2024, 1, 21)) == ["2024-01-01", "2024-01-08"]  # the week of the 15th runs to the 22nd


def audit_events(home: Path) -> pd.DataFrame:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        return read_events(connection, "iris")


@pytest.mark.slow
def test_iris_pickle_and_skops_imported_gated_promoted_served_and_monitored(iris, home, tmp_path, instance, capsys):
    from mlplatform.serving.app import ServingConfig
    from mlplatform_tests.test_serving import LiveServer, wait_until

    folder, rows = iris
    train = first_weeks(rows)
    pickled, skopsed = tmp_path / "iris.pkl", tmp_path / "iris.skops"
    pickled.write_bytes(pickle.dumps(LogisticRegression(max_iter=1000).fit(train[FEATURES], train["species"])))
    skops.io.dump(RandomForestClassifier(n_estimators=30, random_state=0).fit(train[FEATURES], train["species"]),
                  skopsed)

    # a pickle without --allow-pickle: refused, nothing registered, nothing audited
    assert main(["import", "iris", "--file", str(pickled), "--by", "ana", "--reason", "trained in a notebook"]) == 1
    assert "runs whatever code it holds" in capsys.readouterr().err
    tracker = Tracker.under(home / "mlflow")
    assert tracker.client.search_model_versions("name = 'iris'") == []

    # wrong columns: refused with both column lists named
    renamed = train[FEATURES].rename(columns={"sepal_length": "sepal_len"})
    wrong = tmp_path / "wrong.skops"
    skops.io.dump(LogisticRegression(max_iter=1000).fit(renamed, train["species"]), wrong)
    assert main(["import", "iris", "--file", str(wrong), "--by", "ana", "--reason", "r"]) == 1
    err = capsys.readouterr().err
    assert "REFUSED" in err and "not in the model: ['sepal_length']" in err and "nothing was imported" in err

    # the pickle with the flag: a warning, then a version gated on the newest week (no champion yet)
    assert main(["import", "iris", "--file", str(pickled), "--by", "ana", "--reason", "trained in a notebook",
                 "--allow-pickle"]) == 0
    out = capsys.readouterr()
    assert "warning:" in out.err and "unpickling runs the code" in out.err
    assert "imported as v1 (pickle" in out.out and "evaluated on week 2024-01-29" in out.out
    tags = tracker.version_tags("iris", "1")
    assert tags["gates"] == "passed" and tags["week"] == "2024-01-29"
    assert {k for k in tags if k.startswith("gate.")} == {"gate.absolute_threshold", "gate.beat_champion",
                                                          "gate.prediction_sanity"}
    assert tags["mlplatform.imported_sha256"] == hashlib.sha256(pickled.read_bytes()).hexdigest()
    assert tracker.alias_version("iris", CHAMPION) is None  # an import moves no alias: a person promotes

    assert main(["promote", "iris", "--version", "1", "--by", "ana", "--reason", "the notebook model"]) == 0
    assert tracker.alias_version("iris", CHAMPION) == "1"

    # the skops file: its trusted types reported, gated against champion v1 on the same week's rows
    assert main(["import", "iris", "--file", str(skopsed), "--by", "bo", "--reason", "the forest from the lab"]) == 0
    out = capsys.readouterr().out
    assert "imported as v2 (skops" in out and "champion v1" in out
    assert tracker.version_tags("iris", "2")["gate.beat_champion"] == "passed"

    events = audit_events(home)
    imported = events[events["event"] == "model_imported"]
    assert list(imported["version"]) == ["1", "2"] and list(imported["actor"]) == ["ana", "bo"]
    assert hashlib.sha256(skopsed.read_bytes()).hexdigest() in imported["details"].iloc[1]
    assert main(["audit", "iris", "--verify"]) == 0
    capsys.readouterr()

    assert main(["card", "iris", "--version", "2"]) == 0
    assert f"not trained here: imported from iris.skops (SHA-256 {hashlib.sha256(skopsed.read_bytes()).hexdigest()}) " \
        "by bo" in capsys.readouterr().out

    # never trained here: reproduce refuses and says why
    assert main(["reproduce", "iris", "1"]) == 2
    assert "recorded no training window" in capsys.readouterr().err

    # served over real HTTP like any version, and hot-swapped when v2 is promoted
    spec = iris_spec(folder)
    config = ServingConfig(home=home, specs=[spec], tracker=Tracker.under(home / "mlflow"), poll_seconds=0.05,
                           flush_seconds=0.1)
    newest = rows[pd.to_datetime(rows["ts"]) >= pd.Timestamp("2024-01-29")]
    records = newest[FEATURES].head(20).to_dict(orient="records")
    with LiveServer(config) as server:
        answer = server.predict("iris", records)
        assert answer.status_code == 200, answer.text
        answers = answer.json()["predictions"]
        expected = tracker.load_version("iris", "1").predict(newest[FEATURES].head(20))
        assert [a["prediction"] for a in answers] == list(expected)
        assert {(a["version"], a["role"]) for a in answers} == {("1", "champion")}
        bad = server.predict("iris", [{**records[0], "petal_width": "wide"}])
        assert bad.status_code == 422, bad.text
        assert main(["promote", "iris", "--version", "2", "--by", "bo", "--reason", "better forest"]) == 0
        wait_until(lambda: server.champion("iris") == "2")
        assert {a["version"] for a in server.predict("iris", records).json()["predictions"]} == {"2"}

    # monitored like any version: the lifecycle's weeks run with the imported champion (drift against its reference
    # window, the spec's training window before the week it was evaluated on); approval is manual, so it stays
    from dagster import AssetCheckKey, AssetKey

    from mlplatform_tests.helpers import load_definitions, run_weeks

    assert run_weeks(load_definitions(), "iris", instance, "2024-01-01", "2024-01-29").success
    assert tracker.alias_version("iris", CHAMPION) == "2"
    history = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(AssetKey(["iris", "drift"]), "drifted_share"), limit=100)
    newest = next(r.evaluation for r in history if r.partition == "2024-01-29" and r.status.value != "PLANNED")
    assert "prediction" in newest.metadata["per_feature"].value  # the champion's predictions: compared
    assert "prediction" not in newest.metadata["not_compared"].value
