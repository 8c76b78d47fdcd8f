"""Per-feature drift with the same tests and thresholds as Evidently's ``DataDriftPreset``, but fast.

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

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

KS = "K-S p_value"
CHI_SQUARE = "chi-square p_value"
Z_TEST = "Z-test p_value"
WASSERSTEIN = "Wasserstein distance (normed)"
JENSEN_SHANNON = "Jensen-Shannon distance"
THRESHOLDS = {KS: 0.05, CHI_SQUARE: 0.05, Z_TEST: 0.05, WASSERSTEIN: 0.1, JENSEN_SHANNON: 0.1}
P_VALUE_METHODS = {KS, CHI_SQUARE, Z_TEST}


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
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool

    def as_dict(self) -> dict[str, Any]:
        return {"column": self.column, "method": self.method, "score": self.score, "threshold": self.threshold,
                "drifted": self.drifted}


@dataclass
class DriftReport:
    columns: list[ColumnDrift]
    reference_rows: int
    current_rows: int
    max_drifted_share: float
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def drifted(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.drifted]

    @property
    def share(self) -> float:
        return len(self.drifted) / len(self.columns) if self.columns else 0.0

    @property
    def passed(self) -> bool:
        return self.share <= self.max_drifted_share

    def summary(self) -> str:
        names = ", ".join(c.column for c in self.drifted) or "none"
        verdict = "within" if self.passed else "above"
        return (f"{len(self.drifted)} of {len(self.columns)} features drifted (share {self.share:.2f}, "
                f"{verdict} the limit {self.max_drifted_share:g}): {names}")


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
    """Every profiled column of ``current`` against the reference; the share decides the check."""
    results, skipped = [], {}
    for name, profile in reference.columns.items():
        if name not in current.columns:
            skipped[name] = "missing in current data"
            continue
        if profile.rows == 0 or current[name].dropna().empty:
            skipped[name] = "no values in reference or current data"
            continue
        results.append(column_drift(profile, current[name]))
    return DriftReport(results, reference.rows, len(current), max_drifted_share, skipped)


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


def reference_span(week_start: datetime, window_weeks: int, champion_window: tuple[datetime, datetime] | None,
                   champion_version: str | None = None) -> tuple[datetime, datetime, str]:
    """What week W is compared with: the champion's training window when it ended by W, else the N weeks before W."""
    if champion_window is not None and champion_window[1] <= week_start:
        return champion_window[0], champion_window[1], f"training window of champion v{champion_version}"
    return (week_start - timedelta(weeks=window_weeks), week_start,
            f"the {window_weeks} weeks before (no earlier champion)")
