"""The calibrated drift method: honest p-values at any week size, BH across features, an effect floor,
prediction and label drift as their own rows. Pure and fast (no Dagster, no Evidently)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlplatform.lib.drift import (
    CALIBRATED,
    EVIDENTLY,
    LABEL,
    PREDICTION,
    Champion,
    calibrated_drift,
    dataset_drift,
    drift_report,
    profile_reference,
    weekly_drift,
    weeks_with_html,
)
from mlplatform.lib.drift_calibrated import (
    CHI_SQUARE_ASYMPTOTIC,
    CHI_SQUARE_PERMUTATION,
    KS_ASYMPTOTIC,
    KS_PERMUTATION,
    CalibratedSettings,
    benjamini_hochberg,
    categorical_test,
    numerical_test,
)
from mlplatform.specs import ModelSpec

NUMERICAL = ["normal", "skewed", "integer", "few"]
CATEGORICAL = ["color", "rare"]


def mixed(n: int, rng: np.random.Generator, shift: float = 0.0) -> pd.DataFrame:
    """Continuous, skewed, tied integer and few-valued numerics; a balanced and a rare-level categorical."""
    return pd.DataFrame({
        "normal": rng.normal(shift, 1, n), "skewed": rng.lognormal(shift, 0.7, n),
        "integer": rng.integers(0, 50, n).astype(float), "few": rng.integers(0, 4, n).astype(float),
        "color": rng.choice(["red", "green", "blue"], n),
        "rare": rng.choice(["common", "other", "rare"], n, p=[0.7, 0.28, 0.02]),
    })


def null_p_values(reference_rows: int, current_rows: int, seeds: range) -> np.ndarray:
    values = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        report = calibrated_drift(profile_reference(mixed(reference_rows, rng), NUMERICAL, CATEGORICAL),
                                  mixed(current_rows, rng), 0.3, CalibratedSettings(permutations=500, seed=seed))
        values += [c.p_value for c in report.columns]
    return np.array(values)


@pytest.mark.parametrize(("reference_rows", "current_rows"), [(240, 30), (1400, 170), (3000, 1500)])
def test_p_values_are_close_to_uniform_when_nothing_drifted(reference_rows, current_rows):
    p = null_p_values(reference_rows, current_rows, range(60))  # 360 p-values per size
    assert np.mean(p < 0.05) <= 0.05 + 0.035  # ~3 binomial standard errors above the nominal rate
    assert np.mean(p < 0.05) >= 0.005  # not a test that never rejects
    assert 0.35 <= np.mean(p < 0.5) <= 0.65


def test_week_alarms_stay_rare_where_evidentlys_rule_alarms_on_noise():
    alarms = {CALIBRATED: 0, EVIDENTLY: 0}
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        profile = profile_reference(mixed(240 * 6, rng), NUMERICAL, CATEGORICAL)  # > 1000 rows: distances
        current = mixed(30, rng)
        for method in alarms:
            alarms[method] += not drift_report(method, profile, current, 0.3, CalibratedSettings(seed=seed)).passed
    assert alarms[CALIBRATED] <= 2  # <= 5% of 40 weeks
    assert alarms[EVIDENTLY] >= 36  # the fixed 0.1 distance at 30 rows: sampling noise alone crosses it (40/40 seen)


def shifted_week(reference_rows: int, current_rows: int, seed: int, shift: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    reference, current = mixed(reference_rows, rng), mixed(current_rows, rng)
    current["normal"] += shift
    current["color"] = rng.choice(["red", "green", "blue"], current_rows, p=[0.6, 0.2, 0.2])  # from 1/3 each
    return reference, current


@pytest.mark.parametrize("current_rows", [200, 20_000])
def test_a_shift_in_two_features_is_detected_and_only_those(current_rows):
    reference, current = shifted_week(current_rows * 8, current_rows, seed=5, shift=0.6)
    report = calibrated_drift(profile_reference(reference, NUMERICAL, CATEGORICAL), current, 0.3)
    assert {c.column for c in report.drifted} == {"normal", "color"}
    assert report.share == pytest.approx(2 / 6) and not report.passed
    expected = KS_PERMUTATION if current_rows < 1000 else KS_ASYMPTOTIC
    assert next(c for c in report.columns if c.column == "normal").method == expected


def test_a_negligible_shift_on_a_huge_week_is_significant_but_below_the_effect_floor():
    reference, current = shifted_week(160_000, 20_000, seed=6, shift=0.08)
    current["color"] = np.random.default_rng(1).choice(["red", "green", "blue"], 20_000, p=[0.36, 0.32, 0.32])
    report = calibrated_drift(profile_reference(reference, NUMERICAL, CATEGORICAL), current, 0.3)
    by_name = {c.column: c for c in report.columns}
    assert by_name["normal"].p_adjusted < 1e-6 and by_name["color"].p_adjusted < 1e-3  # real, but tiny
    assert by_name["normal"].effect < 0.1 and by_name["color"].effect < 0.1
    assert report.drifted == [] and report.passed
    looser = calibrated_drift(profile_reference(reference, NUMERICAL, CATEGORICAL), current, 0.3,
                              CalibratedSettings(min_effect=0.0))
    assert {"normal", "color"} <= {c.column for c in looser.drifted}


def test_permutation_p_values_agree_with_exact_and_asymptotic_tests_where_those_are_valid():
    rng = np.random.default_rng(3)
    # force permutation; alpha 0.25 puts the early stop (p >= 4 x alpha after 200 permutations) out of reach
    settings = CalibratedSettings(permutations=4000, asymptotic_rows=10**9, alpha=0.25)
    for shift in (0.0, 0.15, 0.3):
        reference, current = rng.normal(0, 1, 300), rng.normal(shift, 1, 250)
        exact = stats.ks_2samp(reference, current, method="exact")
        ours = numerical_test(np.sort(reference), current, settings, "x")
        assert ours.test == KS_PERMUTATION
        assert ours.statistic == pytest.approx(exact.statistic)
        assert ours.p_value == pytest.approx(exact.pvalue, abs=0.02)
    # large samples: scipy's asymptotic K-S (and, from 10,000 effective rows, its limit, within 2% and above it)
    for rows, tolerance in ((2000, 1e-9), (30_000, 0.02)):
        reference, current = rng.normal(0, 1, rows), rng.normal(0.02 * 2000 / rows, 1, rows)
        asymp = stats.ks_2samp(reference, current, method="asymp")
        ours = numerical_test(np.sort(reference), current, CalibratedSettings(), "x")
        assert ours.test == KS_ASYMPTOTIC and ours.statistic == pytest.approx(asymp.statistic)
        assert ours.p_value == pytest.approx(asymp.pvalue, rel=tolerance) and ours.p_value >= asymp.pvalue * (1 - 1e-9)
    # a categorical table with large counts: the asymptotic chi-square and its permutation agree
    reference_counts, current_counts = np.array([50, 30, 20]) * 4, np.array([45, 30, 25]) * 3
    asymptotic = categorical_test(reference_counts, current_counts, CalibratedSettings(), "c")
    assert asymptotic.test == CHI_SQUARE_ASYMPTOTIC
    expected = stats.chi2_contingency(np.vstack([reference_counts, current_counts]), correction=False)
    assert asymptotic.statistic == pytest.approx(expected.statistic) and asymptotic.p_value == pytest.approx(expected.pvalue)
    counts_with_a_rare_value = np.append(reference_counts, 1), np.append(current_counts, 0)
    permuted = categorical_test(*counts_with_a_rare_value, CalibratedSettings(permutations=4000, alpha=0.25), "c")
    assert permuted.test == CHI_SQUARE_PERMUTATION
    assert permuted.p_value == pytest.approx(asymptotic.p_value, abs=0.04)


def test_the_permutation_stops_early_only_where_the_feature_cannot_be_flagged():
    rng = np.random.default_rng(8)
    reference = np.sort(rng.normal(0, 1, 400))
    for shift, full in ((0.0, False), (0.35, True)):
        current = rng.normal(shift, 1, 60)
        early = numerical_test(reference, current, CalibratedSettings(asymptotic_rows=10**9), "x")
        every = numerical_test(reference, current, CalibratedSettings(asymptotic_rows=10**9, alpha=0.25), "x")
        # p-values on the 1/(B+1) grid: 200 permutations when stopped early, all 2000 otherwise
        assert (abs(early.p_value * 201 - round(early.p_value * 201)) < 1e-9) == (not full)
        if full:
            assert early.p_value < 0.2 and early.p_value == every.p_value
        else:
            assert early.p_value >= 0.2 and every.p_value > 0.1


def test_results_are_reproducible_and_seeded():
    reference, current = shifted_week(240, 30, seed=9, shift=0.3)
    profile = profile_reference(reference, NUMERICAL, CATEGORICAL)
    first, again = (calibrated_drift(profile, current, 0.3) for _ in range(2))
    assert [c.as_dict() for c in first.columns] == [c.as_dict() for c in again.columns]
    other_seed = calibrated_drift(profile, current, 0.3, CalibratedSettings(seed=1))
    assert [c.p_value for c in other_seed.columns] != [c.p_value for c in first.columns]


def test_a_category_new_in_the_week_drifts():
    rng = np.random.default_rng(2)
    reference = pd.DataFrame({"color": rng.choice(["red", "green"], 400)})
    current = pd.DataFrame({"color": rng.choice(["red", "green", "violet"], 60, p=[0.35, 0.35, 0.3])})
    (column,) = calibrated_drift(profile_reference(reference, [], ["color"]), current, 0.3).columns
    assert column.method == CHI_SQUARE_PERMUTATION and column.drifted and column.effect == pytest.approx(0.3, abs=0.1)


def test_benjamini_hochberg_adjusts_in_rank_order():
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert benjamini_hochberg([0.9, 0.5]) == pytest.approx([0.9, 0.9])
    assert benjamini_hochberg([]).size == 0


def test_evidently_mode_is_the_old_rule():
    reference, current = shifted_week(1500, 200, seed=4, shift=0.6)
    profile = profile_reference(reference, NUMERICAL, CATEGORICAL)
    ours = drift_report(EVIDENTLY, profile, current, 0.3)
    assert [c.as_dict() for c in ours.columns] == [c.as_dict() for c in dataset_drift(profile, current, 0.3).columns]
    assert ours.method == EVIDENTLY and all(c.p_adjusted is None for c in ours.columns)
    with pytest.raises(ValueError, match="unknown drift method"):
        drift_report("nope", profile, current, 0.3)


# -- weekly_drift: the asset's loop, with the champion's predictions and the labels ------------------------------

def spec(**drift) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "toy", "task": "regression", "source": {"path": "x.csv", "timestamp": "ts"}, "target": "y",
        "features": {"numeric": ["lever", "a", "b", "c"], "categorical": ["color"]},
        "partitions": {"start": "2024-01-01", "training_window_weeks": 4},
        "estimator": {"class": "sklearn.linear_model.Ridge"}, "drift": drift,
    })


def weekly_rows(weeks: int, per_week: int, shift_lever_from: int | None = None, seed: int = 0) -> pd.DataFrame:
    """y leans on ``lever`` only; from week ``shift_lever_from`` lever moves up and nothing else does."""
    rng = np.random.default_rng(seed)
    n = weeks * per_week
    frame = pd.DataFrame({
        "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n) * (7 * 24 * 3600 / per_week), unit="s"),
        "lever": rng.normal(0, 1, n), "a": rng.normal(0, 1, n), "b": rng.uniform(0, 1, n), "c": rng.normal(5, 2, n),
        "color": rng.choice(["red", "green", "blue"], n),
    })
    if shift_lever_from is not None:
        frame.loc[frame.index >= shift_lever_from * per_week, "lever"] += 0.8
    frame["y"] = 3 * frame["lever"] + rng.normal(0, 0.3, n)
    return frame


def fitted_champion(model_spec: ModelSpec, rows: pd.DataFrame, window: tuple[datetime, datetime]) -> Champion:
    from mlplatform.lib.training import build_pipeline, split_xy

    train = rows[(rows["ts"] >= window[0]) & (rows["ts"] < window[1])]
    x, y = split_xy(train, model_spec)
    return Champion("1", window, build_pipeline(model_spec).fit(x, y))


def run_weekly(model_spec: ModelSpec, rows: pd.DataFrame, weeks: list[date], champion: Champion | None):
    reads = []

    def read_window(start: datetime, end: datetime) -> pd.DataFrame:
        reads.append((start, end))
        return rows[(rows["ts"] >= start) & (rows["ts"] < end)]

    results, notes = weekly_drift(model_spec, weeks, rows, read_window, champion)
    return {r.week: r for r in results}, notes, reads


def test_prediction_drift_fires_when_only_the_lever_the_model_leans_on_moves():
    rows = weekly_rows(weeks=8, per_week=300, shift_lever_from=6)
    window = (datetime(2024, 1, 1), datetime(2024, 1, 29))  # weeks 0-3
    weeks = [date(2024, 1, 29) + timedelta(weeks=i) for i in range(4)]  # weeks 4, 5 steady; 6, 7 shifted
    model_spec = spec()
    results, _, reads = run_weekly(model_spec, rows, weeks, fitted_champion(model_spec, rows, window))
    assert reads == [window]  # one reference read, profiled once, reused by every week and the prediction reference
    for week in ("2024-01-29", "2024-02-05"):
        rows_by_role = {c.role: c for c in results[week].report.columns}
        assert not rows_by_role[PREDICTION].drifted and not results[week].report.drifted
    for week in ("2024-02-12", "2024-02-19"):
        report = results[week].report
        prediction = next(c for c in report.columns if c.role == PREDICTION)
        label = next(c for c in report.columns if c.role == LABEL)
        assert prediction.drifted and prediction.effect > 0.2 and not prediction.counts
        assert label.drifted and not label.counts  # y follows the lever
        assert [c.column for c in report.drifted] == ["lever"]  # 1 of 5 inputs
        assert report.passed and "prediction drifted (not counted)" in report.summary()

    counting = spec(prediction_counts=True)
    results, _, _ = run_weekly(counting, rows, weeks, fitted_champion(counting, rows, window))
    shifted = results["2024-02-12"].report
    assert {c.column for c in shifted.drifted} == {"lever", PREDICTION}
    assert shifted.share == pytest.approx(2 / 6) and not shifted.passed
    assert results["2024-01-29"].report.passed


def test_no_champion_no_prediction_row_and_the_report_says_why():
    rows = weekly_rows(weeks=6, per_week=100)
    results, notes, reads = run_weekly(spec(), rows, [date(2024, 1, 29), date(2024, 2, 5)], None)
    assert "no champion: no prediction-drift row" in notes
    report = results["2024-02-05"].report
    assert report.skipped[PREDICTION] == "no champion"
    assert PREDICTION not in {c.role for c in report.columns}
    assert {c.role for c in report.columns} == {"feature", LABEL}
    assert len(reads) == 2  # each week's own 4 weeks before
    assert weeks_with_html(list(results.values()), 4) == {"2024-02-05"}


def test_weeks_before_the_champions_window_ended_get_no_prediction_row_and_empty_weeks_are_skipped():
    rows = weekly_rows(weeks=8, per_week=100)
    window = (datetime(2024, 1, 15), datetime(2024, 2, 12))
    results, notes, _ = run_weekly(spec(), rows, [date(2024, 2, 5), date(2024, 2, 19), date(2024, 2, 26)],
                                   fitted_champion(spec(), rows, window))
    assert "inside or before champion v1" in results["2024-02-05"].report.skipped[PREDICTION]
    assert PREDICTION in {c.role for c in results["2024-02-19"].report.columns}
    assert "2024-02-26" not in results and any("2024-02-26" in n and "skipped" in n for n in notes)


def test_the_training_data_gate_uses_drift_method_unless_it_names_its_own():
    from mlplatform.lib.lifecycle import training_data_check

    rows = weekly_rows(weeks=5, per_week=300, seed=3)
    train, recent = rows.iloc[:1200], rows.iloc[1200:1230]  # 30 recent rows, nothing drifted

    def gate(drift: dict, training_data: dict | None = None):
        model_spec = spec(**drift)
        if training_data:
            model_spec = model_spec.model_copy(update={"gates": model_spec.gates.model_copy(
                update={"training_data": model_spec.gates.training_data.model_copy(update=training_data)})})
        return training_data_check(model_spec, train, recent, "the 30 recent rows")

    calibrated, evidently = gate({}), gate({"method": "evidently"})
    assert calibrated.passed and calibrated.facts["method"] == "calibrated"
    assert not evidently.passed and evidently.facts["method"] == "evidently"  # noise at 30 rows halts training
    assert "training halted" in evidently.reason and "method evidently" in evidently.reason
    own = gate({"method": "evidently"}, {"method": "calibrated"})
    assert own.passed and own.facts["method"] == "calibrated"


def test_html_reports_go_to_the_newest_failing_weeks_and_the_last_week():
    from mlplatform.lib.drift import ColumnDrift, DriftReport, WeekDrift

    def week(name: str, failing: bool) -> WeekDrift:
        column = ColumnDrift("x", "K-S permutation", 0.01, 0.05, failing)
        return WeekDrift(name, DriftReport([column], 100, 10, 0.3), pd.DataFrame(), pd.DataFrame(), "")

    results = [week("w1", True), week("w2", False), week("w3", True), week("w4", True), week("w5", False)]
    assert weeks_with_html(results, 2) == {"w3", "w4", "w5"}
    assert weeks_with_html(results, 0) == {"w5"}
    assert weeks_with_html(results, 10) == {"w1", "w3", "w4", "w5"}
    assert weeks_with_html([], 4) == set()
