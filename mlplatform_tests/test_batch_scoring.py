"""Batch scoring (``scoring.batch``): ``<model>/scores`` writes the champion's predictions of each week's rows to the
warehouse and to the prediction log (role ``batch``), and live performance, drift and the audit read them.

A pure test of the scoring itself, then one run on a real Dagster instance, DuckDB, MLflow and Parquet log."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, AssetRecordsFilter
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlplatform import names
from mlplatform.lib.batch_scoring import batch_request_id, score_week
from mlplatform.lib.live import judged_champion, live_estimates
from mlplatform.lib.outcomes import label_join_keys, match_labels
from mlplatform.lib.prediction_log import read_prediction_log, write_segments
from mlplatform.lib.routing import BATCH_ROLE
from mlplatform.lib.table_schemas import prediction_log_schema, scores_schema, validate_table
from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform.specs import ModelSpec
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, materialized_partitions, run_weeks, warehouse_query

BINARY_SPEC = (TOY_SPEC.replace("task: regression", "task: binary").replace("target: y", "target: label")
               .replace("columns:\n", "columns:\n  label: {categories: [0, 1]}\n")
               + "estimator:\n  class: sklearn.linear_model.LogisticRegression\ngates:\n  metric: roc_auc\n"
                 "  threshold: 0.6\nrollout:\n  approval: auto\n  auto_promote: immediate\n")  # not about the canary stage
BATCH_SPEC = BINARY_SPEC + "scoring:\n  batch: true\n"
WEEKS = ("2024-01-01", "2024-01-08", "2024-01-15")


def binary_rows() -> pd.DataFrame:
    frame = toy_rows()
    noise = np.random.default_rng(2).normal(0, 0.8, len(frame))
    frame["label"] = (frame["x1"] + noise > 5).astype(int)
    return frame


def test_a_week_scored_in_batch_is_one_table_row_and_one_log_row_per_row_keyed_like_the_outcomes(tmp_path):
    import yaml

    spec = ModelSpec.model_validate(yaml.safe_load(BATCH_SPEC))
    rows = binary_rows().assign(ts=lambda f: pd.to_datetime(f["ts"]))
    week = rows[(rows["ts"] >= "2024-01-08") & (rows["ts"] < "2024-01-15")].sample(frac=1, random_state=0)
    from mlplatform.lib.training import build_pipeline

    pipeline: Pipeline = build_pipeline(spec)
    pipeline.fit(rows[spec.feature_columns], rows["label"])
    scored = score_week(spec, pipeline, "3", week, "2024-01-08", pd.Timestamp("2024-02-01").to_pydatetime())

    validate_table(scored.table, scores_schema(spec), "toy.scores")
    assert len(scored.table) == len(scored.log_rows) == len(week)
    assert list(scored.table["id"]) == sorted(week["id"])  # in event-time order
    assert set(scored.table["model_version"]) == {"3"} and set(scored.table["role"]) == {BATCH_ROLE}
    assert isinstance(pipeline[-1], LogisticRegression)
    expected = pipeline.predict_proba(week.sort_values("ts")[spec.feature_columns])[:, 1]
    np.testing.assert_allclose(scored.table["prediction"], expected)
    assert set(json.loads(scored.table["probabilities"][0])) == {"0", "1"}

    home = tmp_path / "home"
    write_segments(home / "prediction_log", scored.log_rows)
    write_segments(home / "prediction_log", scored.log_rows)  # the week scored twice by the same version
    logged = read_prediction_log(home, "toy")
    validate_table(logged, prediction_log_schema(spec), "log")
    assert len(logged) == len(week) and set(logged["role"]) == {BATCH_ROLE}
    assert set(logged["request_id"]) == {batch_request_id("toy", "2024-01-08", "3")}
    assert (logged["time"] == pd.Timestamp("2024-01-08")).all()  # stamped with its week

    outcomes = pd.DataFrame({"join_key": label_join_keys(week, ["id"]), "y": week["label"]})
    matched = match_labels(logged, outcomes)
    assert len(matched.rows) == len(week) and matched.unmatched_labels == 0
    estimates = live_estimates("binary", "roc_auc", matched.rows)
    judged = judged_champion(estimates, "3")
    assert judged is not None and (judged.version, judged.role, judged.rows) == ("3", BATCH_ROLE, len(week))


def test_batch_scoring_needs_a_key_and_is_off_unless_the_spec_asks(home, spec_dir):
    import yaml

    keyless = yaml.safe_load(BATCH_SPEC)
    del keyless["source"]["key"]
    with pytest.raises(ValueError, match="scoring.batch: needs source.key"):
        ModelSpec.model_validate(keyless)

    without_batch = yaml.safe_load(BINARY_SPEC) | {"scoring": {"table": "main.to_score"}}
    with pytest.raises(ValueError, match="scoring.table: set scoring.batch: true as well"):
        ModelSpec.model_validate(without_batch)
    with pytest.raises(ValueError, match="scoring.table: found 'audit.events'"):
        ModelSpec.model_validate(yaml.safe_load(BATCH_SPEC) | {"scoring": {"batch": True, "table": "audit.events"}})

    spec_dir({"toy.yaml": BINARY_SPEC}, {"toy.csv": binary_rows()})
    defs = load_definitions()
    assert AssetKey(["toy", names.SCORES]) not in defs.resolve_asset_graph().get_all_asset_keys()
    assert AssetKey(["toy", names.SCORES]) not in defs.resolve_job_def("toy_weekly").asset_layer.executable_asset_keys


@pytest.mark.slow
def test_the_weekly_scores_asset_scores_each_week_with_the_champion_and_live_performance_counts_the_batch(
        home, spec_dir, instance):
    spec_dir({"toy.yaml": BATCH_SPEC}, {"toy.csv": binary_rows()})
    defs = load_definitions()
    assert AssetKey(["toy", names.SCORES]) in defs.resolve_job_def("toy_weekly").asset_layer.executable_asset_keys

    assert run_weeks(defs, "toy", instance, WEEKS[0], WEEKS[1]).success  # v1 (week 2) becomes champion
    tracker = Tracker.under(home / "mlflow")
    assert tracker.alias_version("toy", CHAMPION) == "1"
    assert run_weeks(defs, "toy", instance, WEEKS[2]).success  # v2 (week 3) becomes champion, then scores week 3
    assert tracker.alias_version("toy", CHAMPION) == "2"
    assert materialized_partitions(instance, ["toy", names.SCORES]) == set(WEEKS)

    features = warehouse_query(home, "select id, ts from toy.features order by id")
    scores = warehouse_query(home, "select week, id, ts, model_version, role, prediction from toy.scores order by id")
    assert list(scores["id"]) == list(features["id"])  # every row of every week, once
    by_week = scores.groupby(scores["week"].dt.strftime("%Y-%m-%d"))["model_version"].agg(set).to_dict()
    assert by_week == {WEEKS[0]: {"1"}, WEEKS[1]: {"1"}, WEEKS[2]: {"2"}}
    assert set(scores["role"]) == {"batch"} and scores["prediction"].between(0, 1).all()
    week_of_row = (pd.to_datetime(scores["ts"]) - pd.to_timedelta(pd.to_datetime(scores["ts"]).dt.weekday, "D")
                   ).dt.normalize()
    assert (week_of_row == scores["week"]).all()

    logged = read_prediction_log(home, "toy")
    assert len(logged) == len(features) and set(logged["role"]) == {"batch"}
    assert logged.groupby("version").size().to_dict() == {"1": 80, "2": 40}
    assert {"x1", "x2", "color"} <= set(logged.columns)  # the inputs, for drift on production inputs

    live = warehouse_query(home, "select week, version, role, rows, value from toy.live_performance order by week")
    assert [(f"{w:%Y-%m-%d}", v, r, n) for w, v, r, n in live[["week", "version", "role", "rows"]].itertuples(
        index=False)] == [(WEEKS[0], "1", "batch", 40), (WEEKS[1], "1", "batch", 40), (WEEKS[2], "2", "batch", 40)]
    assert live["value"].between(0.5, 1).all()  # roc_auc of the batch predictions against the week's labels
    drift = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(["toy", names.DRIFT])),
                                            limit=10).records
    current = {r.partition_key: r.asset_materialization.metadata["current"].value for r in drift}
    assert current[WEEKS[2]] == "40 logged production inputs of the week"  # drift read the batch's inputs
    audit = warehouse_query(home, "select version, week, summary from audit.events where event = 'batch_scored' "
                                  "order by seq")
    assert [(v, w) for v, w in audit[["version", "week"]].itertuples(index=False)] == [
        ("1", WEEKS[0]), ("1", WEEKS[1]), ("2", WEEKS[2])]

    assert run_weeks(defs, "toy", instance, WEEKS[2], assets=[names.SCORES]).success  # scored again: same rows
    assert len(read_prediction_log(home, "toy")) == len(features)
    assert len(warehouse_query(home, "select * from toy.scores")) == len(features)


@pytest.mark.slow
def test_a_scoring_table_the_spec_names_is_what_the_batch_scores(home, spec_dir, instance):
    import duckdb

    spec_dir({"toy.yaml": BATCH_SPEC + "  table: main.to_score\n"}, {"toy.csv": binary_rows()})
    to_score = binary_rows().drop(columns=["y", "label"]).assign(ts=lambda f: pd.to_datetime(f["ts"]),
                                                                 id=lambda f: f["id"] + 1000)  # other customers
    to_score = to_score[to_score["ts"] < pd.Timestamp(WEEKS[2])].iloc[::2]  # weeks 1 and 2, every other row
    home.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(home / "warehouse.duckdb")) as connection:
        connection.register("frame", to_score)
        connection.execute("create table main.to_score as select * from frame")
    assert run_weeks(load_definitions(), "toy", instance, WEEKS[0], WEEKS[1]).success

    scores = warehouse_query(home, "select id, model_version from toy.scores order by id")
    assert list(scores["id"]) == sorted(to_score["id"]) and set(scores["model_version"]) == {"1"}
    logged = read_prediction_log(home, "toy")
    assert sorted(logged["entity_key"].astype(int)) == sorted(to_score["id"])
