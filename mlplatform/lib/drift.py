"""Per-feature drift of a week against a reference, by one of two methods (the spec's ``drift.method``):

- ``calibrated`` (default, :mod:`mlplatform.lib.drift_calibrated`): p-values that account for both sample
  sizes, Benjamini-Hochberg across the week's features, and an effect-size floor;
- ``evidently``: the same tests and thresholds as Evidently's ``DataDriftPreset``, but fast (below).

Evidently 0.7's default test per column (legacy/calculations/stattests/registry.py,
``_get_default_stattest``), with n = distinct values of reference and current together:

    reference <= 1000 rows: numerical n > 5 -> K-S (drift if p <= 0.05);
                            numerical n <= 5 or categorical -> chi-square if n > 2 else Z-test (p < 0.05)
    reference  > 1000 rows: numerical n > 5 -> Wasserstein / std(reference) (drift if >= 0.1);
                            numerical n <= 5 or categorical -> Jensen-Shannon distance (>= 0.1)

Infinite values and nulls are dropped first, as Evidently does. The reference side is
profiled once (sorted values, counts, std) and reused for every current week, which is
what makes this cheap: the reference is fixed per champion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

from mlplatform.lib.drift_calibrated import CalibratedSettings, benjamini_hochberg, categorical_test, numerical_test
from mlplatform.lib.source import Window, rows_in_window

if TYPE_CHECKING:
    from mlplatform.specs import ModelSpec

KS = "K-S p_value"
CHI_SQUARE = "chi-square p_value"
Z_TEST = "Z-test p_value"
WASSERSTEIN = "Wasserstein distance (normed)"
JENSEN_SHANNON = "Jensen-Shannon distance"
THRESHOLDS = {KS: 0.05, CHI_SQUARE: 0.05, Z_TEST: 0.05, WASSERSTEIN: 0.1, JENSEN_SHANNON: 0.1}
P_VALUE_METHODS = {KS, CHI_SQUARE, Z_TEST}
EVIDENTLY, CALIBRATED = "evidently", "calibrated"
FEATURE, PREDICTION, LABEL = "feature", "prediction", "label"


@dataclass
class ColumnProfile:
    """What the drift tests need from one reference column."""

    name: str
    kind: str  # "numerical" | "categorical"
    rows: int
    counts: pd.Series  # value -> count (categorical, or numerical with few values)
    sorted_values: np.ndarray | None = None  # numerical only
    std: float = 0.0
    values: pd.Series | None = None  # small references keep their values for exact tests


@dataclass
class ReferenceProfile:
    columns: dict[str, ColumnProfile]
    rows: int


@dataclass
class ColumnDrift:
    """One row of a week's drift table: an input feature, the champion's predictions, or the labels."""

    column: str
    method: str  # the test that decided (Evidently's name, or e.g. "K-S permutation")
    score: float  # evidently: the test's p-value or distance; calibrated: the adjusted p-value
    threshold: float  # evidently: the test's threshold; calibrated: alpha
    drifted: bool
    role: str = FEATURE  # feature | prediction | label
    counts: bool = True  # whether its verdict counts toward the week's drifted share
    statistic: float | None = None  # calibrated: K-S D or chi-square
    p_value: float | None = None  # calibrated: the unadjusted p-value
    p_adjusted: float | None = None  # calibrated: Benjamini-Hochberg adjusted within its family
    effect: float | None = None  # calibrated: K-S D or total variation distance (0..1)

    def as_dict(self) -> dict[str, Any]:
        return {"column": self.column, "method": self.method, "score": self.score, "threshold": self.threshold,
                "drifted": self.drifted, "role": self.role, "counts": self.counts, "statistic": self.statistic,
                "p_value": self.p_value, "p_adjusted": self.p_adjusted, "effect": self.effect}

    def brief(self) -> dict[str, Any]:
        """What a person needs to judge the verdict: the test and its numbers (rounded for metadata)."""
        if self.p_adjusted is None:
            return {"method": self.method, "score": round(float(self.score), 6)}
        return {"method": self.method, "statistic": round(float(self.statistic), 6), "p_value": float(f"{self.p_value:.4g}"),
                "p_adjusted": float(f"{self.p_adjusted:.4g}"), "effect": round(float(self.effect), 4)}


@dataclass
class DriftReport:
    columns: list[ColumnDrift]
    reference_rows: int
    current_rows: int
    max_drifted_share: float
    skipped: dict[str, str] = field(default_factory=dict)
    method: str = EVIDENTLY

    @property
    def counted(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.counts]

    @property
    def drifted(self) -> list[ColumnDrift]:
        """Drifted rows that count toward the share (input features, plus predictions/labels when the spec says)."""
        return [c for c in self.counted if c.drifted]

    @property
    def share(self) -> float:
        counted = self.counted
        return len(self.drifted) / len(counted) if counted else 0.0

    @property
    def passed(self) -> bool:
        return self.share <= self.max_drifted_share

    def summary(self) -> str:
        names = ", ".join(c.column for c in self.drifted) or "none"
        verdict = "within" if self.passed else "above"
        text = (f"{len(self.drifted)} of {len(self.counted)} features drifted (share {self.share:.2f}, "
                f"{verdict} the limit {self.max_drifted_share:g}; method {self.method}): {names}")
        others = [f"{c.role} {'drifted' if c.drifted else 'steady'} (not counted)"
                  for c in self.columns if not c.counts]
        return text + ("; " + ", ".join(others) if others else "")


def _clean(values: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values):
        values = values.replace([np.inf, -np.inf], np.nan)
    return values.dropna()


def profile_reference(frame: pd.DataFrame, numerical: list[str], categorical: list[str]) -> ReferenceProfile:
    """Profile the reference once (per champion) for every later comparison."""
    columns = {}
    for name in numerical:
        values = _clean(frame[name]).astype("float64")
        sorted_values = np.sort(values.to_numpy())
        distinct = int(np.count_nonzero(np.diff(sorted_values))) + 1 if len(sorted_values) else 0
        columns[name] = ColumnProfile(
            name, "numerical", len(values), values.value_counts(sort=False) if distinct <= 20 else pd.Series(dtype=float),
            sorted_values=sorted_values, std=float(np.std(sorted_values)) if len(values) else 0.0,
            values=values if len(values) <= 1000 else None,
        )
    for name in categorical:
        values = _clean(frame[name])
        columns[name] = ColumnProfile(name, "categorical", len(values), values.value_counts(sort=False),
                                      values=values if len(values) <= 1000 else None)
    return ReferenceProfile(columns, len(frame))


def _distinct_together(reference: ColumnProfile, current: pd.Series, limit: int = 5) -> int:
    """Distinct values in reference and current together; exact up to ``limit``, else a number above it."""
    if reference.kind == "numerical" and len(reference.counts) == 0:
        return limit + 1  # more than 20 distinct reference values
    return len(set(reference.counts.index) | set(current.unique()))


def column_drift(reference: ColumnProfile, current: pd.Series) -> ColumnDrift:
    current = _clean(current)
    if reference.kind == "numerical":
        current = current.astype("float64")
    n_values = _distinct_together(reference, current)
    if reference.rows <= 1000:
        if reference.kind == "numerical" and n_values > 5:
            method, score = KS, float(stats.ks_2samp(reference.values, current)[1])
        elif n_values > 2:
            method, score = CHI_SQUARE, _chi_square(reference.counts, reference.rows, current)
        else:
            method, score = Z_TEST, _z_test(reference.values, current)
    elif reference.kind == "numerical" and n_values > 5:
        method, score = WASSERSTEIN, _wasserstein_normed(reference, current.to_numpy())
    else:
        method, score = JENSEN_SHANNON, _jensen_shannon(reference.counts, reference.rows, current)
    threshold = THRESHOLDS[method]
    if method == KS:
        drifted = score <= threshold
    elif method in P_VALUE_METHODS:
        drifted = score < threshold
    else:
        drifted = score >= threshold
    return ColumnDrift(reference.name, method, score, threshold, bool(drifted))


def _chi_square(reference_counts: pd.Series, reference_rows: int, current: pd.Series) -> float:
    current_counts = current.value_counts(sort=False)
    keys = list(set(reference_counts.index) | set(current_counts.index))
    scale = len(current) / reference_rows
    expected = [float(reference_counts.get(k, 0)) * scale for k in keys]
    observed = [float(current_counts.get(k, 0)) for k in keys]
    with np.errstate(divide="ignore", invalid="ignore"):  # a category new in current: p = 0, as in Evidently
        return float(stats.chisquare(observed, expected)[1])


def _z_test(reference: pd.Series, current: pd.Series) -> float:
    if reference.nunique() == 1 and current.nunique() == 1 and reference.unique()[0] == current.unique()[0]:
        return 1.0
    first = sorted(set(reference.unique()) | set(current.unique()))[0]
    p1, p2 = float(np.mean(reference != first)), float(np.mean(current != first))
    n1, n2 = len(reference), len(current)
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


def _wasserstein_normed(reference: ColumnProfile, current: np.ndarray) -> float:
    """W1 between the empirical distributions (as scipy computes it), over std(reference), from pre-sorted values."""
    u = reference.sorted_values
    v = np.sort(current)
    both = np.concatenate([u, v])
    order = np.argsort(both, kind="stable")  # two sorted runs: a linear merge
    both, from_u = both[order], order < len(u)
    deltas = np.diff(both)
    # Rows of u (of v) up to each merged position. Where a tie continues, delta is 0 and the term vanishes;
    # where it ends, the count is exactly #u <= value, the empirical CDF (what searchsorted(side="right") gives).
    u_cdf = np.cumsum(from_u)[:-1] / len(u)
    v_cdf = np.cumsum(~from_u)[:-1] / len(v)
    distance_w1 = float(np.sum(np.abs(u_cdf - v_cdf) * deltas))
    return distance_w1 / max(reference.std, 0.001)


def _jensen_shannon(reference_counts: pd.Series, reference_rows: int, current: pd.Series) -> float:
    current_counts = current.value_counts(sort=False)
    keys = list(set(reference_counts.index) | set(current_counts.index))
    p = np.array([reference_counts.get(k, 0) / reference_rows for k in keys], dtype=float)
    q = np.array([current_counts.get(k, 0) / len(current) for k in keys], dtype=float)
    return float(distance.jensenshannon(p, q))


def dataset_drift(reference: ReferenceProfile, current: pd.DataFrame, max_drifted_share: float) -> DriftReport:
    """Evidently's rule: every profiled column of ``current`` against the reference; the share decides the check."""
    names, skipped = _columns_to_test(reference, current)
    results = [column_drift(reference.columns[name], current[name]) for name in names]
    return DriftReport(results, reference.rows, len(current), max_drifted_share, skipped, EVIDENTLY)


def calibrated_column(reference: ColumnProfile, current: pd.Series, settings: CalibratedSettings,
                      role: str = FEATURE, counts: bool = True) -> ColumnDrift:
    """The calibrated test of one column; the verdict waits for the family's adjustment (:func:`decide`)."""
    current = _clean(current)
    if reference.kind == "numerical":
        result = numerical_test(reference.sorted_values, current.astype("float64").to_numpy(), settings, reference.name)
    else:
        current_counts = current.value_counts(sort=False)
        keys = list(dict.fromkeys([*reference.counts.index, *current_counts.index]))
        result = categorical_test(reference.counts.reindex(keys, fill_value=0).to_numpy(),
                                  current_counts.reindex(keys, fill_value=0).to_numpy(), settings, reference.name)
    return ColumnDrift(reference.name, result.test, result.p_value, settings.alpha, False, role, counts,
                       statistic=result.statistic, p_value=result.p_value, p_adjusted=result.p_value,
                       effect=result.effect)


def decide(family: list[ColumnDrift], settings: CalibratedSettings) -> list[ColumnDrift]:
    """Benjamini-Hochberg across one family of tests, then: drifted = adjusted p < alpha and effect >= min_effect."""
    for column, adjusted in zip(family, benjamini_hochberg([c.p_value for c in family]), strict=True):
        column.p_adjusted = float(adjusted)
        column.score = float(adjusted)
        column.drifted = bool(adjusted < settings.alpha and column.effect >= settings.min_effect)
    return family


def _columns_to_test(reference: ReferenceProfile, current: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    names, skipped = [], {}
    for name, profile in reference.columns.items():
        if name not in current.columns:
            skipped[name] = "missing in current data"
        elif profile.rows == 0 or _clean(current[name]).empty:
            skipped[name] = "no values in reference or current data"
        else:
            names.append(name)
    return names, skipped


def calibrated_drift(reference: ReferenceProfile, current: pd.DataFrame, max_drifted_share: float,
                     settings: CalibratedSettings | None = None) -> DriftReport:
    """Every profiled column, tested with p-values that account for both sizes, BH across the features."""
    settings = settings or CalibratedSettings()
    names, skipped = _columns_to_test(reference, current)
    family = decide([calibrated_column(reference.columns[n], current[n], settings) for n in names], settings)
    return DriftReport(family, reference.rows, len(current), max_drifted_share, skipped, CALIBRATED)


def drift_report(method: str, reference: ReferenceProfile, current: pd.DataFrame, max_drifted_share: float,
                 settings: CalibratedSettings | None = None) -> DriftReport:
    """The week's input drift by the spec's method: ``evidently`` (its exact rule) or ``calibrated``."""
    if method == EVIDENTLY:
        return dataset_drift(reference, current, max_drifted_share)
    if method == CALIBRATED:
        return calibrated_drift(reference, current, max_drifted_share, settings)
    raise ValueError(f"unknown drift method {method!r}: evidently or calibrated")


def single_column_drift(method: str, reference: ColumnProfile, current: pd.Series, settings: CalibratedSettings,
                        role: str, counts: bool) -> ColumnDrift:
    """A prediction or label row: its own family of one (its adjusted p-value is its p-value)."""
    if method == EVIDENTLY:
        column = column_drift(reference, current)
        column.role, column.counts = role, counts
        return column
    return decide([calibrated_column(reference, current, settings, role, counts)], settings)[0]


def settings_from_spec(drift_spec: Any) -> CalibratedSettings:
    """The calibrated method's knobs from a spec's ``drift`` section."""
    return CalibratedSettings(alpha=drift_spec.alpha, min_effect=drift_spec.min_effect,
                              permutations=drift_spec.permutations, permutation_rows=drift_spec.permutation_rows,
                              asymptotic_rows=drift_spec.asymptotic_rows, seed=drift_spec.seed)


def render_evidently_report(reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str],
                            categorical: list[str], path: str, max_rows: int = 5000, seed: int = 0) -> str:
    """Evidently's HTML drift report from a bounded sample of each side (Evidently costs ~5 us per row x column).

    Its verdicts on a sample can differ from ours on all rows; the check uses ours, the HTML is for reading.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = numerical + categorical
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)

    def bounded(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame[columns]
        return frame.sample(max_rows, random_state=seed) if len(frame) > max_rows else frame

    with np.errstate(divide="ignore", invalid="ignore"):  # Evidently's chi-square on new categories
        snapshot = Report([DataDriftPreset()]).run(
            current_data=Dataset.from_pandas(bounded(current), data_definition=definition),
            reference_data=Dataset.from_pandas(bounded(reference), data_definition=definition),
        )
    snapshot.save_html(path)
    return path


def shown_columns(report: DriftReport, limit: int, seed: int = 0) -> list[ColumnDrift]:
    """At most ``limit`` rows of a week's drift table for what a person looks at (the plot, the Evidently report,
    the metadata table); the statistics and the verdict cover every row.

    Chosen deterministically: the prediction and label rows, the drifted features (the strongest first), then a
    sample of the others drawn with ``seed``; shown in the table's order. A report over thousands of features
    would cost minutes and gigabytes and be unreadable anyway.
    """
    columns = report.columns
    if len(columns) <= limit:
        return list(columns)
    strength = [c.effect if c.effect is not None else (1 - c.score if c.method in P_VALUE_METHODS else c.score)
                for c in columns]
    first = [i for i, c in enumerate(columns) if c.role != FEATURE]
    first += sorted((i for i, c in enumerate(columns) if c.role == FEATURE and c.drifted), key=lambda i: -strength[i])
    chosen = first[:limit]
    taken = set(chosen)
    rest = [i for i in range(len(columns)) if i not in taken]
    if len(chosen) < limit:
        chosen += np.random.default_rng(seed).choice(rest, limit - len(chosen), replace=False).tolist()
    return [columns[i] for i in sorted(chosen)]


def shown_note(report: DriftReport, shown: list[ColumnDrift]) -> str:
    """'' when every row is shown, else a sentence saying which rows are."""
    if len(shown) == len(report.columns):
        return ""
    return (f"{len(shown)} of {len(report.columns)} rows shown (prediction and label, the drifted features, then a "
            "seeded sample); the statistics and the verdict cover all, every row is in the warehouse's drift table")


def reference_span(week_start: datetime, window_weeks: int, champion_window: tuple[datetime, datetime] | None,
                   champion_version: str | None = None) -> tuple[datetime, datetime, str]:
    """What week W is compared with: the champion's training window when it ended by W, else the N weeks before W."""
    if champion_window is not None and champion_window[1] <= week_start:
        return champion_window[0], champion_window[1], f"training window of champion v{champion_version}"
    return (week_start - timedelta(weeks=window_weeks), week_start,
            f"the {window_weeks} weeks before (no earlier champion)")


@dataclass
class Champion:
    """The production model whose predictions are watched: scored once on its training window per version."""

    version: str
    window: tuple[datetime, datetime]
    model: Any  # a fitted sklearn pipeline


@dataclass
class WeekDrift:
    """One week's verdict, with the rows it came from (Evidently's HTML report needs them)."""

    week: str
    report: DriftReport
    current: pd.DataFrame
    reference_rows: pd.DataFrame
    reference_text: str
    inputs_from: str = "the features of the week"  # or the prediction log's production inputs


def _prediction_values(spec: ModelSpec, model: Any, rows: pd.DataFrame) -> pd.Series:
    """What is compared: the score (regression value, binary probability) or, for multiclass, the predicted class."""
    from mlplatform.lib.training import predict, split_xy

    x, _ = split_xy(rows, spec)
    predicted = predict(model, x, spec.task)
    values = predicted.label if spec.task == "multiclass" else predicted.score
    return pd.Series(np.asarray(values), name=PREDICTION)


def _target_profile(spec: ModelSpec, rows: pd.DataFrame) -> ReferenceProfile | None:
    if spec.target not in rows.columns:
        return None
    frame = rows[[spec.target]]
    if spec.task == "regression":
        return profile_reference(frame, [spec.target], [])
    return profile_reference(frame.astype({spec.target: str}).where(frame.notna()), [], [spec.target])


def weekly_drift(spec: ModelSpec, week_starts: list[date], run_rows: pd.DataFrame,
                 read_window: Callable[[datetime, datetime], pd.DataFrame], champion: Champion | None,
                 method: str | None = None,
                 production_inputs: pd.DataFrame | None = None) -> tuple[list[WeekDrift], list[str]]:
    """Every week of a run against its reference: input features, champion predictions and labels.

    ``run_rows`` are the features rows of the run's weeks (read once, sliced per week); ``read_window(start, end)``
    reads a reference window, called once per distinct window (the profile is reused for every week it serves).
    ``production_inputs`` (the prediction log's inputs, with a ``time`` column): a week that has logged inputs is
    judged on what production actually sent; its labels still come from the features rows.
    Returns the weeks' results and notes for the log (weeks skipped, prediction drift not computed and why).
    """
    drift_spec = spec.drift
    method = method or drift_spec.method
    settings = settings_from_spec(drift_spec)
    from mlplatform.lib.text import add_current_proxies, add_reference_proxies, proxy_columns

    text = spec.features.text  # compared through per-document numbers (mlplatform.lib.text)
    numerical, categorical = [*spec.features.numeric, *proxy_columns(text)], spec.features.categorical
    references: dict[tuple[datetime, datetime], tuple[ReferenceProfile, pd.DataFrame, ReferenceProfile | None]] = {}
    vocabularies: dict[tuple[datetime, datetime], dict] = {}
    prediction_reference: ColumnProfile | str | None = None
    results, notes = [], []
    if champion is None:
        notes.append("no champion: no prediction-drift row")
    for week_start in week_starts:
        start = datetime.combine(week_start, datetime.min.time())
        week = week_start.isoformat()
        current = rows_in_window(run_rows, spec.time_column, Window(start, start + timedelta(weeks=1)))
        labelled, inputs_from = current, "the features of the week"
        if production_inputs is not None and not production_inputs.empty:
            logged = rows_in_window(production_inputs, "time", Window(start, start + timedelta(weeks=1)))
            if not logged.empty and all(c in logged.columns for c in spec.feature_columns):
                current, inputs_from = logged, f"{len(logged)} logged production inputs of the week"
        reference_start, reference_end, reference_kind = reference_span(
            start, spec.partitions.training_window_weeks, champion.window if champion else None,
            champion.version if champion else None)
        if (reference_start, reference_end) not in references:
            rows = read_window(reference_start, reference_end)
            if text:
                rows, vocabularies[(reference_start, reference_end)] = add_reference_proxies(rows, text)
            references[(reference_start, reference_end)] = (
                profile_reference(rows, numerical, categorical), rows, _target_profile(spec, rows))
        profile, reference_rows, target_profile = references[(reference_start, reference_end)]
        if text:
            current = add_current_proxies(current, text, vocabularies[(reference_start, reference_end)])
        if current.empty or profile.rows == 0:
            notes.append(f"drift week {week}: no current rows or no reference rows ({reference_kind}); skipped")
            continue
        report = drift_report(method, profile, current, drift_spec.max_drifted_share, settings)
        if champion is None:
            report.skipped[PREDICTION] = "no champion"
        elif start < champion.window[1]:
            report.skipped[PREDICTION] = (f"week is inside or before champion v{champion.version}'s training window "
                                          f"(ends {champion.window[1]:%Y-%m-%d})")
        else:
            if prediction_reference is None:
                prediction_reference = _champion_reference(spec, champion, references, read_window)
            if isinstance(prediction_reference, str):
                report.skipped[PREDICTION] = prediction_reference
            else:
                report.columns.append(single_column_drift(
                    method, prediction_reference, _prediction_values(spec, champion.model, current), settings,
                    PREDICTION, drift_spec.prediction_counts))
        labels = labelled[spec.target] if spec.target in labelled.columns else None
        if (target_profile is None or labels is None or labels.dropna().empty
                or target_profile.columns[spec.target].rows == 0):
            report.skipped[LABEL] = "labels not known for this week or its reference"
        else:
            if spec.task != "regression":
                labels = labels.astype(str).where(labels.notna())
            row = single_column_drift(method, target_profile.columns[spec.target], labels, settings, LABEL,
                                      drift_spec.label_counts)
            report.columns.append(row)
        results.append(WeekDrift(week, report, current, reference_rows,
                                 f"{reference_kind}: {reference_start:%Y-%m-%d} .. {reference_end:%Y-%m-%d}", inputs_from))
    return results, notes


def _champion_reference(spec: ModelSpec, champion: Champion, references: dict,
                        read_window: Callable[[datetime, datetime], pd.DataFrame]) -> ColumnProfile | str:
    """The champion's predictions on its own training window, profiled once per champion version."""
    cached = references.get(champion.window)
    rows = cached[1] if cached else read_window(*champion.window)
    if rows.empty:
        return f"no rows in champion v{champion.version}'s training window"
    frame = _prediction_values(spec, champion.model, rows).to_frame()
    if spec.task == "multiclass":
        return profile_reference(frame, [], [PREDICTION]).columns[PREDICTION]
    return profile_reference(frame, [PREDICTION], []).columns[PREDICTION]


def weeks_with_html(results: list[WeekDrift], newest_failing: int) -> set[str]:
    """Evidently's HTML costs ~1-2 s a week: the newest ``newest_failing`` failing weeks and the run's last week."""
    failing = [r.week for r in results if not r.report.passed]
    failing = failing[-newest_failing:] if newest_failing else []  # ([-0:] would be every week)
    return set(failing) | ({results[-1].week} if results else set())
