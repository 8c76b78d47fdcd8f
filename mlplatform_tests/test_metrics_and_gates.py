"""Metrics agree with scikit-learn; gates decide as documented (pure functions)."""

from __future__ import annotations

import os
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mlplatform.lib import gates
from mlplatform.lib.lifecycle import (
    MIN_ROWS_FOR_WORKERS,
    THREADS_ENV,
    WORKERS_ENV,
    deciding_threads,
    rows_needed,
    split_train_eval,
    threads_per_run,
    training_workers,
)
from mlplatform.lib.metrics import (
    METRIC_FUNCTIONS,
    _sum_columns,
    draw_counts,
    evaluate,
    metric_value,
    paired_bootstrap,
    resample_batches,
    resampled_metric,
)
from mlplatform.lib.promotion import CANARY_SHARE_TAG, gate_changes
from mlplatform.specs import ModelSpec

RNG = np.random.default_rng(7)


@pytest.mark.parametrize(
    ("metric", "reference"),
    [
        ("roc_auc", skm.roc_auc_score),
        ("pr_auc", skm.average_precision_score),
        ("log_loss", skm.log_loss),
        ("brier", skm.brier_score_loss),
        ("f1", lambda y, p: skm.f1_score(y, p >= 0.5)),
    ],
)
def test_binary_metrics_match_sklearn(metric, reference):
    y = (RNG.random(400) < 0.3).astype(float)
    p = np.clip(0.4 * y + 0.6 * RNG.random(400), 0.001, 0.999)
    p[:50] = np.round(p[:50], 1)  # ties
    assert metric_value(metric, y, p) == pytest.approx(reference(y, p), rel=1e-9)


def test_regression_and_multiclass_metrics_match_sklearn():
    y = RNG.normal(size=300)
    p = y + RNG.normal(size=300) * 0.4
    assert metric_value("rmse", y, p) == pytest.approx(skm.root_mean_squared_error(y, p))
    assert metric_value("mae", y, p) == pytest.approx(skm.mean_absolute_error(y, p))
    assert metric_value("r2", y, p) == pytest.approx(skm.r2_score(y, p))
    labels = RNG.integers(0, 3, 200).astype(float)
    predicted = np.where(RNG.random(200) < 0.7, labels, RNG.integers(0, 3, 200)).astype(float)
    assert metric_value("accuracy", labels, predicted) == pytest.approx(skm.accuracy_score(labels, predicted))
    assert metric_value("macro_f1", labels, predicted) == pytest.approx(skm.f1_score(labels, predicted, average="macro"))


@pytest.mark.parametrize("metric", ["rmse", "mae", "r2", "log_loss", "brier", "f1", "accuracy"])
def test_bootstrap_from_row_counts_equals_metric_on_the_resampled_rows(metric):
    """The count-and-sum shortcut must give the metric of each resample, as gathering its rows does."""
    y = (RNG.random(500) < 0.4).astype(float) if metric in ("log_loss", "brier", "f1") else RNG.normal(size=500)
    s = np.clip(0.5 * y + 0.5 * RNG.random(500), 0.01, 0.99) if metric in ("log_loss", "brier", "f1") else y + RNG.normal(size=500)
    if metric == "accuracy":
        y, s = RNG.integers(0, 3, 500).astype(float), RNG.integers(0, 3, 500).astype(float)
    batches = list(resample_batches(len(y), 50, seed=1))
    columns = _sum_columns(metric, y, s)
    assert columns is not None
    for idx in batches:
        expected = METRIC_FUNCTIONS[metric](y, s, idx)
        by_counts = resampled_metric(metric, y, s, idx, draw_counts(idx, len(y)), columns)
        by_gather = resampled_metric(metric, y, s, idx, None, columns)
        np.testing.assert_allclose(by_counts, expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(by_gather, expected, rtol=1e-9, atol=1e-12)


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    y = RNG.normal(size=200)
    p = y + RNG.normal(size=200)
    first = evaluate("regression", y, p, seed=3)["rmse"]
    assert first.low < first.value < first.high
    assert evaluate("regression", y, p, seed=3)["rmse"] == first


def test_paired_bootstrap_flags_a_clearly_worse_challenger_only():
    y = RNG.normal(size=300)
    good = y + RNG.normal(size=300) * 0.3
    bad = y + RNG.normal(size=300) * 1.0
    worse = paired_bootstrap("rmse", y, bad, good)
    assert worse.difference > 0 and worse.p_value < 0.01
    assert gates.champion_gate(worse, 0.05, "3").passed is False
    same = paired_bootstrap("rmse", y, good, good)
    assert same.difference == 0 and same.p_value == 1.0
    assert gates.champion_gate(same, 0.05, "3").passed
    better = paired_bootstrap("rmse", y, good, bad)
    assert gates.champion_gate(better, 0.05, "3").passed


def test_champion_gate_without_champion_passes_as_first_model():
    outcome = gates.champion_gate(None, 0.05, None)
    assert outcome.passed and "first model" in outcome.reason


def test_threshold_gate_direction_depends_on_metric():
    assert gates.threshold_gate("rmse", 10, 12).passed
    assert not gates.threshold_gate("rmse", 13, 12).passed
    assert gates.threshold_gate("roc_auc", 0.8, 0.7).passed
    assert not gates.threshold_gate("roc_auc", 0.6, 0.7).passed
    assert gates.threshold_gate("rmse", 99, None).passed


def test_sanity_gate_catches_constant_non_finite_and_out_of_range():
    assert not gates.sanity_gate("regression", np.full(10, 3.0)).passed
    assert not gates.sanity_gate("regression", np.array([1.0, np.nan, 2.0])).passed
    assert not gates.sanity_gate("regression", np.array([1.0, 2.0, 500.0]), allowed_range=(0, 10)).passed
    assert gates.sanity_gate("regression", np.array([1.0, 2.0, 3.0]), allowed_range=(0, 10)).passed
    assert not gates.sanity_gate("binary", np.array(["a", "a"]), allowed_classes=["a", "b"]).passed
    assert not gates.sanity_gate("binary", np.array(["a", "c"]), allowed_classes=["a", "b"]).passed


def _spec(approval: str) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "toy", "task": "regression", "source": {"path": "x.csv", "timestamp": "ts"}, "target": "y",
        "features": {"numeric": ["x"]}, "partitions": {"start": "2024-01-01", "training_window_weeks": 2},
        "rollout": {"approval": approval},
    })


def test_training_rows_are_the_weeks_before_and_never_the_evaluation_week():
    times = pd.date_range("2024-01-01", "2024-01-29", freq="6h", inclusive="left")
    frame = pd.DataFrame({"ts": times, "x": range(len(times)), "y": range(len(times))})
    train, evaluation, window = split_train_eval(frame, _spec("auto"), datetime(2024, 1, 22))
    assert window.start == datetime(2024, 1, 8) and window.end == datetime(2024, 1, 22)
    assert train["ts"].min() >= pd.Timestamp("2024-01-08") and train["ts"].max() < pd.Timestamp("2024-01-22")
    assert evaluation["ts"].min() >= pd.Timestamp("2024-01-22")
    assert set(train["ts"]).isdisjoint(evaluation["ts"])


def test_aliases_move_only_on_pass_and_champion_only_with_auto_approval():
    none = {"challenger": None, "champion": None}
    assert gate_changes("toy", "4", False, "2024-01-22", "me", "auto", {}, none)[0] == []
    manual, _ = gate_changes("toy", "4", True, "2024-01-22", "me", "manual", {"challenger": "3"},
                             {"challenger": "2024-01-15"})
    assert [(c.alias, c.version, c.previous_version) for c in manual] == [("challenger", "4", "3")]
    immediate = _spec("auto").rollout.model_copy(update={"auto_promote": "immediate"})  # the explicit opt-out
    auto, _ = gate_changes("toy", "4", True, "2024-01-22", "me", "auto", {"champion": "2"}, {"champion": "2024-01-15"},
                           immediate)
    assert [(c.alias, c.previous_version) for c in auto] == [("challenger", None), ("champion", "2")]


def test_by_default_an_auto_approved_version_serves_as_canary_and_only_a_first_version_is_champion_at_once():
    """The canary stage is the default (rollout.auto_promote: canary): under approval: auto a version that passed
    every gate becomes challenger at the canary share, not champion, while a champion serves; the canary analysis
    promotes it (lib/canary.py). A model's first version has nothing to be compared with: champion at once."""
    rollout = _spec("auto").rollout
    assert rollout.auto_promote == "canary" and rollout.canary_percent == 10
    for given in (rollout, None):  # the spec's rollout section, or none at all: the same default
        canary, _ = gate_changes("toy", "4", True, "2024-01-22", "me", "auto", {"champion": "2"},
                                    {"champion": "2024-01-15"}, given)
        assert [(c.alias, c.version, c.previous_version) for c in canary] == [("challenger", "4", None)]
        assert canary[0].version_tags[CANARY_SHARE_TAG] == "10" and "serves 10% as canary first" in canary[0].reason
        first, _ = gate_changes("toy", "1", True, "2024-01-01", "me", "auto", {}, {}, given)
        assert [(c.alias, c.version) for c in first] == [("challenger", "1"), ("champion", "1")]
    no_canary = {**_spec("auto").model_dump(by_alias=True), "rollout": {"approval": "auto", "canary_percent": 0}}
    with pytest.raises(ValueError, match="could never promote it; set canary_percent above 0"):
        ModelSpec.model_validate(no_canary)  # auto, canary first, but no canary traffic: refused at load
    no_canary["rollout"]["auto_promote"] = "immediate"
    assert ModelSpec.model_validate(no_canary).rollout.canary_percent == 0


def test_a_rerun_of_an_earlier_week_does_not_take_an_alias_from_a_later_weeks_version():
    current = {"challenger": "9", "champion": "9"}
    immediate = _spec("auto").rollout.model_copy(update={"auto_promote": "immediate"})  # would take champion too
    changes, note = gate_changes("toy", "12", True, "2024-01-08", "me", "auto", current,
                                 {"challenger": "2024-02-05", "champion": "2024-02-05"}, immediate)
    assert changes == []
    assert "champion stays v9 (trained for the later week 2024-02-05)" in note


def test_a_week_reads_its_training_window_and_the_data_gates_recent_days_whichever_reaches_further():
    spec = _spec("auto")  # 2-week window, the training-data gate compares the 30 days before W
    needed = rows_needed(spec, datetime(2024, 3, 4))
    assert needed.start == datetime(2024, 2, 3) and needed.end == datetime(2024, 3, 11)
    longer = spec.model_copy(update={"partitions": spec.partitions.model_copy(update={"training_window_weeks": 8})})
    assert rows_needed(longer, datetime(2024, 3, 4)).start == datetime(2024, 1, 8)


def test_training_workers_follow_the_setting_else_cores_for_big_windows_only(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert training_workers(12, MIN_ROWS_FOR_WORKERS - 1) == 1  # small fits: workers would cost more than they save
    assert training_workers(12, MIN_ROWS_FOR_WORKERS) == min(os.cpu_count() or 1, 12)
    assert training_workers(1, 10**7) == 1  # one week: nothing to overlap
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert training_workers(12, 10) == 3 and training_workers(2, 10) == 2
    monkeypatch.setenv(WORKERS_ENV, "0")
    assert training_workers(12, 10**7) == 1
    monkeypatch.setenv(WORKERS_ENV, "two")
    with pytest.raises(ValueError, match="MLPLATFORM_TRAINING_WORKERS='two'.*whole number"):
        training_workers(12, 10)


def test_a_run_gets_its_share_of_the_cores_where_the_instance_starts_several_runs_at_once(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert threads_per_run(8, None) is None  # a test or ephemeral instance: nothing said, no limit
    assert threads_per_run(8, 1) is None  # the embedded instance: one run at a time uses every core
    assert threads_per_run(8, 4) == 2 and threads_per_run(2, 4) == 1 and threads_per_run(2, 2) == 1
    assert threads_per_run(16, -1) is None  # Dagster's "no limit"
    monkeypatch.setenv(THREADS_ENV, "3")
    assert threads_per_run(8, 4) == 3 and threads_per_run(8, None) == 3
    monkeypatch.setenv(THREADS_ENV, "0")
    assert threads_per_run(8, 4) is None  # 0: all cores, whatever the instance
    for bad in ("two", "-1"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ValueError, match=f"MLPLATFORM_THREADS_PER_RUN='{bad}'"):
            threads_per_run(8, 4)
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert training_workers(12, 10**7, run_threads=1) == 1  # big windows: no more workers than the run's cores


def test_fits_in_the_run_process_use_the_runs_threads_and_none_is_no_limit():
    """The limit reaches the OpenMP runtime scikit-learn's gradient boosting fits with (as threadpoolctl sees it)."""
    from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: F401  loads the OpenMP runtime
    from threadpoolctl import threadpool_info

    def openmp_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"}

    before = openmp_threads()
    if not before or before == {1}:
        pytest.skip("no OpenMP runtime, or one core: a limit of one thread could not be told apart")
    with deciding_threads(1, run_threads=1):
        assert openmp_threads() == {1}
    with deciding_threads(1, run_threads=None):
        assert openmp_threads() == before
    with deciding_threads(2, run_threads=None):  # workers train: the deciding process stays single-threaded
        assert openmp_threads() == {1}
    assert openmp_threads() == before


def test_a_decision_threshold_moves_training_metrics_fairness_live_performance_and_the_served_label_together():
    """`evaluation.decision_threshold` is one decision: the label training predicts and the service returns, the
    f1 of the evaluation and of live performance, and the fairness selection rates all change with it, alike."""
    import yaml

    from mlplatform.lib import live
    from mlplatform.lib.fairness import fairness_report
    from mlplatform.lib.training import build_pipeline, encode_target, predict, split_xy
    from mlplatform.serving.models import LoadedModel
    from mlplatform_tests.conftest import TOY_SPEC, toy_rows

    def binary_spec(threshold: float | None) -> ModelSpec:
        data = yaml.safe_load(TOY_SPEC.replace("task: regression", "task: binary").replace("target: y", "target: big"))
        if threshold is not None:
            data["evaluation"] = {"decision_threshold": threshold}
        return ModelSpec.model_validate(data)

    rows = toy_rows(weeks=4)
    rows["big"] = np.where(rows["y"] + RNG.normal(0, 4, len(rows)) > 10, "yes", "no")
    default, strict = binary_spec(None), binary_spec(0.8)
    assert default.decision_threshold == 0.5 and strict.decision_threshold == 0.8
    x, y = split_xy(rows, strict)
    pipeline = build_pipeline(strict).fit(x, y)
    loose_pred = predict(pipeline, x, "binary", default.decision_threshold)
    strict_pred = predict(pipeline, x, "binary", strict.decision_threshold)
    between = (strict_pred.score >= 0.5) & (strict_pred.score < 0.8)
    assert between.sum() >= 5  # rows the two thresholds decide differently
    assert set(strict_pred.label[between]) == {"no"} and set(loose_pred.label[between]) == {"yes"}
    assert list(strict_pred.label) == ["yes" if p >= 0.8 else "no" for p in strict_pred.score]

    records = [{"x1": r.x1, "x2": r.x2, "color": r.color} for r in rows.itertuples()]
    served = [o["prediction"] for o in LoadedModel.of(strict, "1", pipeline).predict(records)]
    assert served == list(strict_pred.label)  # the service answers what training predicted, at the same threshold
    assert [o["prediction"] for o in LoadedModel.of(default, "1", pipeline).predict(records)] == list(loose_pred.label)

    y_metric = encode_target(np.asarray(y), "binary", strict_pred.classes)
    positive = strict_pred.label == "yes"
    f1 = evaluate("binary", y_metric, strict_pred.score, n_resamples=20, threshold=0.8)["f1"].value
    assert f1 == pytest.approx(skm.f1_score(y_metric, positive.astype(float)))
    assert f1 != pytest.approx(evaluate("binary", y_metric, strict_pred.score, n_resamples=20)["f1"].value)
    assert live.estimate("binary", "f1", y_metric, strict_pred.score, threshold=0.8).value == pytest.approx(f1)

    groups = {"color": rows["color"]}
    report = fairness_report("binary", y_metric, strict_pred.score, groups, "f1", 1.0, threshold=0.8)
    [color] = report.attributes
    rates = color.table.set_index("group")["selection_rate"].sort_index()
    expected = pd.Series(positive, index=rows.index).groupby(rows["color"]).mean().sort_index()
    assert list(rates.index) == list(expected.index) and rates.to_numpy() == pytest.approx(expected.to_numpy())
