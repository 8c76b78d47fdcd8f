"""Training, evaluation, gates and aliases on a real Dagster instance, DuckDB and MLflow (SQLite) in temp dirs."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, AssetRecordsFilter

from mlplatform.lib.settings import REPO_DIR
from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import check_record, load_definitions, run_weeks, warehouse_query

pytestmark = pytest.mark.usefixtures("warehouse_backend")

MODEL_SPEC = TOY_SPEC + """
estimator:
  class: sklearn.linear_model.Ridge
  params: {alpha: 0.1}
gates:
  metric: rmse
  threshold: 1.0
rollout:
  approval: auto
  auto_promote: immediate  # champion at once: not about the canary stage (test_canary.py)
"""
DUMMY_SPEC = MODEL_SPEC.replace("sklearn.linear_model.Ridge", "sklearn.dummy.DummyRegressor").replace(
    "params: {alpha: 0.1}", "params: {strategy: mean}"
)
WEEK2, WEEK3 = "2024-01-08", "2024-01-15"


def tracker(home) -> Tracker:
    return Tracker.under(home / "mlflow")


def check_on_week(instance, check: str, week: str):
    record = check_record(instance, ["toy", "model"], check)
    assert record.evaluation.partition == week
    return record.evaluation


@pytest.mark.postgres_extended
def test_dummy_model_fails_the_absolute_gate_and_never_gets_an_alias(home, spec_dir, instance):
    folder = spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", WEEK2).success
    registry = tracker(home)
    assert registry.alias_version("toy", CHAMPION) == "1"

    (folder / "toy.yaml").write_text(DUMMY_SPEC)
    assert run_weeks(load_definitions(), "toy", instance, WEEK3).success

    threshold = check_on_week(instance, "absolute_threshold", WEEK3)
    assert threshold.passed is False
    assert "misses the bar <= 1" in threshold.metadata["reason"].value
    assert check_on_week(instance, "prediction_sanity", WEEK3).passed is False
    assert registry.version_tags("toy", "2")["gates"] == "failed"
    assert registry.alias_version("toy", CHAMPION) == "1"
    assert registry.alias_version("toy", CHALLENGER) == "1"
    audit = warehouse_query(home, "select alias, version from audit.alias_changes order by changed_at")
    assert set(audit["version"]) == {"1"}
    assert sorted(audit["alias"]) == ["challenger", "champion"]


@pytest.mark.postgres_extended
def test_challenger_on_shuffled_targets_fails_the_champion_gate_and_a_clean_retrain_passes(home, spec_dir, instance):
    clean = toy_rows()
    folder = spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": clean})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, "2024-01-01", WEEK3).success
    registry = tracker(home)
    champion = registry.alias_version("toy", CHAMPION)
    assert champion == "2"

    shuffled = clean.copy()
    training = pd.to_datetime(shuffled["ts"]) < pd.Timestamp(WEEK3)
    shuffled.loc[training, "y"] = np.random.default_rng(1).permutation(shuffled.loc[training, "y"].to_numpy())
    shuffled.to_csv(folder / "toy.csv", index=False)
    assert run_weeks(defs, "toy", instance, "2024-01-01", WEEK2, assets=["raw", "features"]).success
    assert run_weeks(defs, "toy", instance, WEEK3).success

    verdict = check_on_week(instance, "beat_champion", WEEK3)
    assert verdict.passed is False
    metadata = verdict.metadata
    assert metadata["p_value"].value < 0.05
    assert metadata["difference"].value > 0
    assert metadata["challenger"].value > metadata["champion"].value
    assert metadata["difference_ci_low"].value > 0
    assert metadata["champion_version"].value == champion
    assert "significantly worse" in metadata["reason"].value
    assert registry.alias_version("toy", CHAMPION) == champion

    clean.to_csv(folder / "toy.csv", index=False)
    assert run_weeks(defs, "toy", instance, "2024-01-01", WEEK2, assets=["raw", "features"]).success
    assert run_weeks(defs, "toy", instance, WEEK3).success
    retrain = check_on_week(instance, "beat_champion", WEEK3)
    assert retrain.passed is True
    assert retrain.metadata["difference"].value == pytest.approx(0.0, abs=1e-9)


@pytest.mark.postgres_extended
def test_training_is_reproducible_and_the_mlflow_run_holds_everything(home, spec_dir, instance, monkeypatch):
    spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    monkeypatch.setenv("MLPLATFORM_MLFLOW_UI_URL", "https://mlflow.example.com")
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, "2024-01-01", WEEK3).success
    assert run_weeks(defs, "toy", instance, WEEK3).success
    registry = tracker(home)
    first, second = (registry.client.get_model_version("toy", v) for v in ("2", "3"))
    run_a, run_b = registry.run(first.run_id), registry.run(second.run_id)
    assert run_a.data.metrics == run_b.data.metrics
    assert run_a.data.tags["data.fingerprint"] == run_b.data.tags["data.fingerprint"]
    assert len(run_a.data.tags["data.fingerprint"]) == 64

    params = run_a.data.params
    assert params["estimator"] == "sklearn.linear_model.Ridge"
    assert params["estimator.alpha"] == "0.1"
    assert params["seed"] == "0"
    assert (params["train_start"], params["train_end"], params["eval_week"]) == ("2023-11-20", WEEK3, WEEK3)
    assert params["train_rows"] == "80" and params["eval_rows"] == "40"
    assert {"rmse", "mae", "r2", "rmse_ci_low", "rmse_ci_high"} <= set(run_a.data.metrics)
    tags = run_a.data.tags
    assert tags["mlplatform.version"]
    assert tags["data.train_window"] == f"2023-11-20..{WEEK3}"
    assert tags["library.scikit-learn"] and tags["library.mlflow"] and tags["library.dagster"]
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True)
    if git.returncode == 0:
        assert tags["git.commit"] == git.stdout.strip()
    parent = registry.run(tags["mlflow.parentRunId"])  # the weeks of one Dagster run nest under one parent run
    assert parent.data.tags["dagster.run_id"] == tags["dagster.run_id"] and parent.info.status == "FINISHED"
    assert parent.data.tags["dagster_run_id"] == tags["dagster.run_id"]  # opened by dagster-mlflow's resource
    assert registry.run(second.run_id).data.tags["mlflow.parentRunId"] != parent.info.run_id  # a later run: its own
    artifacts = {a.path for a in registry.client.list_artifacts(run_a.info.run_id)}
    assert {"gates.json", "predicted_vs_actual_and_residuals.png"} <= artifacts
    model = registry.load_version("toy", "2")
    assert hasattr(model, "predict")

    model_event = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(["toy", "model"]), asset_partitions=[WEEK3]), limit=1
    ).records[0].asset_materialization
    experiment = run_a.info.experiment_id
    assert model_event.metadata["mlflow_run"].value == (
        f"https://mlflow.example.com/#/experiments/{experiment}/runs/{second.run_id}")
    assert model_event.metadata["mlflow_model_version"].value == "https://mlflow.example.com/#/models/toy/versions/3"
    backtest = instance.fetch_materializations(AssetKey(["toy", "backtest"]), limit=1).records[0]
    assert backtest.asset_materialization.metadata["weeks"].value == 2


def test_no_evaluation_row_is_in_the_training_window(home, spec_dir, instance):
    spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", WEEK3).success
    registry = tracker(home)
    for version, week in (("1", WEEK2), ("2", WEEK3)):
        params = registry.run(registry.client.get_model_version("toy", version).run_id).data.params
        trained_on = warehouse_query(
            home, f"select id from toy.features where ts >= '{params['train_start']}' and ts < '{params['train_end']}'"
        )
        assert len(trained_on) == int(params["train_rows"])
        evaluated = warehouse_query(home, f"select id, ts, model_version from toy.predictions where week = '{week}'")
        assert len(evaluated) == int(params["eval_rows"]) == 40
        assert set(evaluated["model_version"]) == {version}
        assert set(evaluated["id"]).isdisjoint(trained_on["id"])
        assert (evaluated["ts"] >= pd.Timestamp(week)).all()
        assert (evaluated["ts"] < pd.Timestamp(week) + pd.Timedelta(days=7)).all()


@pytest.mark.postgres_extended
def test_a_shared_mlflow_store_replaces_the_embedded_one(home, spec_dir, instance, tmp_path, monkeypatch):
    """MLPLATFORM_MLFLOW_TRACKING_URI (+ _ARTIFACTS) swaps the SQLite store under MLPLATFORM_HOME for a shared one."""
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("MLPLATFORM_MLFLOW_TRACKING_URI", f"sqlite:///{shared / 'mlflow.db'}")
    monkeypatch.setenv("MLPLATFORM_MLFLOW_ARTIFACTS", (shared / "artifacts").as_uri())
    spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", WEEK2).success

    store = Tracker(f"sqlite:///{shared / 'mlflow.db'}", None)
    assert store.alias_version("toy", CHAMPION) == "1"
    assert any((shared / "artifacts" / "toy").rglob("model.skops"))
    assert not (home / "mlflow" / "mlflow.db").exists()
    from mlplatform.lib.settings import load_settings

    assert Tracker.for_settings(load_settings()).tracking_uri == store.tracking_uri


def test_weeks_trained_in_worker_processes_match_training_in_process(home, spec_dir, instance, monkeypatch):
    """A backfill's weeks may fit side by side in worker processes; versions, order and metrics must not change."""
    from mlplatform.lib.lifecycle import WORKERS_ENV, train_week
    from mlplatform.specs import load_spec_file

    folder = spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    monkeypatch.setenv(WORKERS_ENV, "2")
    result = run_weeks(load_definitions(), "toy", instance, "2024-01-01", WEEK3)
    assert result.success
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("training 3 weeks in 2 worker processes" in m for m in messages), messages

    evaluations = warehouse_query(home, "select * from toy.evaluations order by week")
    assert [f"{w:%Y-%m-%d}" for w in evaluations["week"]] == [WEEK2, WEEK3]  # week 1 has nothing before it
    assert list(evaluations["model_version"]) == ["1", "2"]  # registered in week order
    spec = load_spec_file(folder / "toy.yaml")[0]
    features = warehouse_query(home, "select * from toy.features")
    for row in evaluations.itertuples():
        in_process = train_week(spec, features, row.week.to_pydatetime())
        assert row.data_fingerprint == in_process.fingerprint
        assert row.value == in_process.metrics["rmse"].value
        assert (row.ci_low, row.ci_high) == (in_process.metrics["rmse"].low, in_process.metrics["rmse"].high)
    assert tracker(home).alias_version("toy", CHAMPION) == "2"


def classification_rows() -> pd.DataFrame:
    """The toy rows with a binary label and a three-class band, both mostly decided by x1."""
    frame = toy_rows()
    noise = np.random.default_rng(2).normal(0, 0.8, len(frame))
    frame["label"] = (frame["x1"] + noise > 5).astype(int)
    frame["band"] = pd.cut(frame["x1"] + noise, [-np.inf, 3.3, 6.6, np.inf], labels=["low", "mid", "high"]).astype(str)
    return frame


@pytest.mark.parametrize(("task", "target", "rule", "metric", "threshold", "metrics", "plots"), [
    ("binary", "label", "{categories: [0, 1]}", "roc_auc", 0.7,
     {"roc_auc", "pr_auc", "f1", "log_loss", "brier"}, {"roc.png", "calibration.png", "confusion_matrix.png"}),
    pytest.param("multiclass", "band", "{categories: [low, mid, high]}", "macro_f1", 0.5,
                 {"accuracy", "macro_f1"}, {"confusion_matrix.png"}, marks=pytest.mark.postgres_extended),
])
def test_classifiers_are_evaluated_gated_and_promoted_like_regressors(home, spec_dir, instance, task, target, rule,
                                                                      metric, threshold, metrics, plots):
    spec = (TOY_SPEC.replace("task: regression", f"task: {task}").replace("target: y", f"target: {target}")
            .replace("columns:\n", f"columns:\n  {target}: {rule}\n")
            + f"estimator:\n  class: sklearn.linear_model.LogisticRegression\ngates:\n  metric: {metric}\n"
              f"  threshold: {threshold}\nrollout:\n  approval: auto\n  auto_promote: immediate\n")
    spec_dir({"toy.yaml": spec}, {"toy.csv": classification_rows()})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", WEEK3).success

    registry = tracker(home)
    assert registry.alias_version("toy", CHAMPION) == "2"  # both weeks passed every gate
    run = registry.run(registry.client.get_model_version("toy", "2").run_id)
    assert metrics <= set(run.data.metrics)
    assert {f"{metric}_ci_low", f"{metric}_ci_high"} <= set(run.data.metrics)
    assert run.data.metrics[metric] >= threshold
    assert plots | {"gates.json"} <= {a.path for a in registry.client.list_artifacts(run.info.run_id)}
    champion = check_on_week(instance, "beat_champion", WEEK3)
    assert champion.passed and champion.metadata["champion_version"].value == "1"
    assert 0 <= champion.metadata["p_value"].value <= 1
    predictions = warehouse_query(home, f"select predicted_label from toy.predictions where week = '{WEEK3}'")
    classes = {"label": {"0", "1"}, "band": {"low", "mid", "high"}}[target]
    assert len(predictions) == 40 and set(predictions["predicted_label"]) <= classes


def test_prediction_sanity_range_comes_from_the_spec_bounds_widened_by_a_quarter_of_the_span(home, spec_dir, instance):
    rows = toy_rows()
    spec = (MODEL_SPEC.replace("color: {categories: [red, green, blue]}",
                               "color: {categories: [red, green, blue]}\n  y: {max: 30}")
            .replace("sklearn.linear_model.Ridge", "sklearn.dummy.DummyRegressor")
            .replace("params: {alpha: 0.1}", "params: {strategy: constant, constant: 1000}"))
    spec_dir({"toy.yaml": spec}, {"toy.csv": rows})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", WEEK2).success
    sanity = check_on_week(instance, "prediction_sanity", WEEK2)
    lowest = rows.loc[pd.to_datetime(rows["ts"]) < pd.Timestamp(WEEK2), "y"].min()  # the training window's
    span = 30 - lowest  # declared max 30; no declared min: the training minimum
    assert sanity.passed is False
    assert f"40 predictions outside [{lowest - 0.25 * span:.4g}, {30 + 0.25 * span:.4g}]" in sanity.metadata["reason"].value
