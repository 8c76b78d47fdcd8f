"""The canary analysis: canary against champion on the same traffic window, on signals that need no labels.

Why these signals: labels for fraud or credit arrive weeks later, but a broken or slow or different canary shows
within the hour in what the service itself logs (:mod:`mlplatform.lib.prediction_log`, error rows included).
Both arms see the same entity mix (the canary share is a stable hash of the entity, :mod:`mlplatform.lib.routing`),
so any significant difference is the version's doing. Each signal is a one-sided test at ``alpha``; a canary
significantly worse on any one is stopped:

- **error rate**: error rows (status >= 400, a version that failed to score) over all its rows; two-proportion
  z-test, canary higher.
- **latency p99**: one latency per request and arm (every record of a request shares it). Stopped when the
  canary's p99 is above ``latency_p99_ratio`` x the champion's *and* the one-sided bootstrap lower bound of the
  ratio (1 - alpha, 400 resamples, fixed seed) is above 1: a ratio threshold keeps a 2 ms jitter on a 1 ms model
  from stopping anything, the bootstrap keeps a handful of slow requests from doing so.
- **predictions**: regression and binary, the two-sample Kolmogorov-Smirnov test on the scores; multiclass, the
  chi-square test on the class counts. Stopped when significant *and* the shift (KS statistic, or total variation
  distance of class shares) exceeds ``max_prediction_shift``: a new version is expected to differ a little.
- **business metric** (when outcomes have arrived, e.g. clicks): the positive-outcome rate of the predictions each
  arm answered; two-proportion z-test, canary lower (click-through rate, conversion).

Nothing is judged before each arm has ``min_requests`` requests; a canary that is worse on nothing is good enough
(``promote``: the next ramp step, or champion) once it has served ``min_minutes`` at its current share. Pure: frames
in, a verdict out; :mod:`mlplatform.lib.canary` reads the log and carries the verdict out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mlplatform.lib.prediction_log import ERROR_STATUS_FROM
from mlplatform.lib.routing import CANARY_ROLE, CHAMPION_ROLE

PROMOTE, CONTINUE, STOP = "promote", "continue", "stop"
BOOTSTRAP_RESAMPLES = 400
BOOTSTRAP_MAX_REQUESTS = 20_000
"""Requests per arm the latency bootstrap resamples at most (a uniform subsample beyond): bounded memory and time."""
SEED = 7


@dataclass(frozen=True)
class AnalysisSettings:
    """The thresholds (``rollout.analysis`` of the spec; these are its defaults)."""

    min_requests: int = 200
    min_minutes: float = 30.0
    alpha: float = 0.01
    latency_p99_ratio: float = 1.5
    max_prediction_shift: float = 0.1

    @classmethod
    def of(cls, analysis: Any) -> AnalysisSettings:
        """From a spec's ``rollout.analysis`` section."""
        return cls(analysis.min_requests, analysis.min_minutes, analysis.alpha, analysis.latency_p99_ratio,
                   analysis.max_prediction_shift)


@dataclass(frozen=True)
class Signal:
    """One signal's comparison: the two arms' values, the test, and whether the canary is significantly worse."""

    name: str
    canary: float | None
    champion: float | None
    p_value: float | None
    worse: bool
    detail: str

    def text(self) -> str:
        verdict = "WORSE" if self.worse else "ok"
        return f"{self.name}: {verdict}: {self.detail}"


@dataclass(frozen=True)
class CanaryAnalysis:
    """The verdict (promote / continue / stop), why, and the numbers behind it."""

    decision: str
    reason: str
    canary_version: str | None
    champion_version: str | None
    canary_requests: int
    champion_requests: int
    minutes: float
    signals: tuple[Signal, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "signals": [asdict(s) for s in self.signals]}

    def text(self) -> str:
        """What the CLI prints and the audit carries: the verdict, the traffic, one line per signal."""
        head = (f"canary analysis: {self.decision.upper()}: {self.reason} (canary v{self.canary_version or '-'}: "
                f"{self.canary_requests} requests, champion v{self.champion_version or '-'}: "
                f"{self.champion_requests} requests, {self.minutes:.0f} min at this share)")
        return "\n".join([head, *("  " + s.text() for s in self.signals)])

    def summary(self) -> str:
        """One line for an audit reason: the verdict and the worse signals (or every signal's numbers)."""
        chosen = [s for s in self.signals if s.worse] or list(self.signals)
        return f"{self.reason}; " + "; ".join(s.text() for s in chosen)


def two_proportion_p(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """One-sided p-value that rate a is greater than rate b (pooled two-proportion z-test); 1.0 when undefined."""
    if n_a == 0 or n_b == 0:
        return 1.0
    pooled = (hits_a + hits_b) / (n_a + n_b)
    if pooled in (0.0, 1.0):
        return 1.0
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = (hits_a / n_a - hits_b / n_b) / se
    return float(stats.norm.sf(z))


def error_signal(canary: pd.DataFrame, champion: pd.DataFrame, alpha: float) -> Signal:
    """Error rows over all rows of each arm; the canary is worse when its rate is significantly higher."""
    errors_c = int((canary["status"] >= ERROR_STATUS_FROM).sum())
    errors_p = int((champion["status"] >= ERROR_STATUS_FROM).sum())
    rate_c, rate_p = errors_c / max(len(canary), 1), errors_p / max(len(champion), 1)
    p = two_proportion_p(errors_c, len(canary), errors_p, len(champion))
    return Signal("error rate", rate_c, rate_p, p, p < alpha and rate_c > rate_p,
                  f"canary {rate_c:.2%} ({errors_c}/{len(canary)}) vs champion {rate_p:.2%} "
                  f"({errors_p}/{len(champion)}), one-sided p={p:.3g}")


def request_latencies(rows: pd.DataFrame) -> np.ndarray:
    """One latency (ms) per request of an arm: every record of a request was answered at once."""
    answered = rows[rows["status"] < ERROR_STATUS_FROM]
    return answered.groupby("request_id", sort=False)["latency_ms"].first().to_numpy("float64")


def latency_signal(canary: np.ndarray, champion: np.ndarray, ratio_limit: float, alpha: float) -> Signal:
    """p99 by arm; worse when above ``ratio_limit`` x the champion's and the bootstrap lower bound of the ratio > 1."""
    if len(canary) == 0 or len(champion) == 0:
        return Signal("latency p99", None, None, None, False, "no answered requests in one arm")
    p99_c, p99_p = float(np.percentile(canary, 99)), float(np.percentile(champion, 99))
    ratio = p99_c / p99_p if p99_p > 0 else float("inf")
    rng = np.random.default_rng(SEED)
    c = canary if len(canary) <= BOOTSTRAP_MAX_REQUESTS else rng.choice(canary, BOOTSTRAP_MAX_REQUESTS, replace=False)
    p = champion if len(champion) <= BOOTSTRAP_MAX_REQUESTS else rng.choice(champion, BOOTSTRAP_MAX_REQUESTS,
                                                                            replace=False)
    boot_c = np.percentile(rng.choice(c, (BOOTSTRAP_RESAMPLES, len(c))), 99, axis=1)
    boot_p = np.percentile(rng.choice(p, (BOOTSTRAP_RESAMPLES, len(p))), 99, axis=1)
    ratios = boot_c / np.maximum(boot_p, 1e-9)
    low = float(np.quantile(ratios, alpha))
    share_not_slower = float((ratios <= 1.0).mean())
    worse = ratio > ratio_limit and low > 1.0
    return Signal("latency p99", p99_c, p99_p, share_not_slower, worse,
                  f"canary {p99_c:.2f} ms vs champion {p99_p:.2f} ms (x{ratio:.2f}; limit x{ratio_limit:g}; "
                  f"bootstrap {1 - alpha:.0%} lower bound x{low:.2f})")


def prediction_signal(task: str, canary: pd.DataFrame, champion: pd.DataFrame, alpha: float,
                      max_shift: float) -> Signal:
    """Scores (KS) or class shares (chi-square) of what each arm answered; worse when significant and large."""
    ok_c = canary[canary["status"] < ERROR_STATUS_FROM]
    ok_p = champion[champion["status"] < ERROR_STATUS_FROM]
    if ok_c.empty or ok_p.empty:
        return Signal("predictions", None, None, None, False, "no answered records in one arm")
    if task == "multiclass":
        labels = sorted(set(ok_c["label"].astype(str)) | set(ok_p["label"].astype(str)))
        counts_c = ok_c["label"].astype(str).value_counts().reindex(labels, fill_value=0).to_numpy()
        counts_p = ok_p["label"].astype(str).value_counts().reindex(labels, fill_value=0).to_numpy()
        shift = float(np.abs(counts_c / counts_c.sum() - counts_p / counts_p.sum()).sum() / 2)
        if len(labels) < 2:
            p = 1.0
        else:
            p = float(stats.chi2_contingency(np.vstack([counts_c, counts_p]))[1])
        test = "chi-square on class shares, total variation distance"
    else:
        scores_c = ok_c["score"].to_numpy("float64")
        scores_p = ok_p["score"].to_numpy("float64")
        result = stats.ks_2samp(scores_c, scores_p)
        shift, p = float(result.statistic), float(result.pvalue)
        test = "two-sample KS on scores, statistic"
    worse = p < alpha and shift > max_shift
    return Signal("predictions", shift, 0.0, p, worse,
                  f"{test} {shift:.3f} (limit {max_shift:g}), p={p:.3g}")


def business_signal(canary: pd.DataFrame, champion: pd.DataFrame, alpha: float, name: str = "outcome rate") -> Signal:
    """The positive-outcome rate (``outcome`` 0/1, e.g. a click) of each arm's answered records; worse when lower."""
    c = canary["outcome"].dropna().astype(float)
    p_ = champion["outcome"].dropna().astype(float)
    if c.empty or p_.empty:
        return Signal(name, None, None, None, False, "no outcomes yet in one arm")
    rate_c, rate_p = float(c.mean()), float(p_.mean())
    p = two_proportion_p(int(p_.sum()), len(p_), int(c.sum()), len(c))  # champion greater than canary
    return Signal(name, rate_c, rate_p, p, p < alpha and rate_c < rate_p,
                  f"canary {rate_c:.2%} ({int(c.sum())}/{len(c)}) vs champion {rate_p:.2%} "
                  f"({int(p_.sum())}/{len(p_)}), one-sided p={p:.3g}")


def analyse(task: str, logged: pd.DataFrame, canary_version: str | None, champion_version: str | None,
            since: datetime | None, now: datetime, settings: AnalysisSettings,
            outcomes: pd.DataFrame | None = None, business_name: str = "outcome rate") -> CanaryAnalysis:
    """Judge the canary on ``logged`` (the window's log rows, error rows included: ``read_prediction_log(...,
    errors=True)``) served since ``since`` (when its current share began; None: its first logged row).

    ``outcomes`` (optional): ``request_id``, ``record_index``, ``outcome`` (0/1) for answered records whose outcome
    has arrived; it adds the business signal.
    """
    minutes_since = 0.0
    if canary_version is None or champion_version is None or canary_version == champion_version:
        return CanaryAnalysis(CONTINUE, "no canary: challenger and champion are the same version (or one is unset)",
                              canary_version, champion_version, 0, 0, 0.0)
    rows = logged
    if since is not None:
        rows = rows[rows["time"] >= pd.Timestamp(since)]
    canary = rows[(rows["role"] == CANARY_ROLE) & (rows["version"].astype(str) == str(canary_version))]
    champion = rows[(rows["role"] == CHAMPION_ROLE) & (rows["version"].astype(str) == str(champion_version))]
    canary_requests, champion_requests = int(canary["request_id"].nunique()), int(champion["request_id"].nunique())
    start = pd.Timestamp(since) if since is not None else (canary["time"].min() if not canary.empty else None)
    if start is not None and not pd.isna(start):
        minutes_since = max(0.0, (pd.Timestamp(now) - start).total_seconds() / 60)
    counts = (canary_version, champion_version, canary_requests, champion_requests, minutes_since)
    if min(canary_requests, champion_requests) < settings.min_requests:
        return CanaryAnalysis(CONTINUE, f"too little traffic to judge: each arm needs {settings.min_requests} "
                              "requests", *counts)
    signals = [error_signal(canary, champion, settings.alpha),
               latency_signal(request_latencies(canary), request_latencies(champion), settings.latency_p99_ratio,
                              settings.alpha),
               prediction_signal(task, canary, champion, settings.alpha, settings.max_prediction_shift)]
    if outcomes is not None and not outcomes.empty:
        joined = [arm.merge(outcomes[["request_id", "record_index", "outcome"]], on=["request_id", "record_index"],
                            how="inner") for arm in (canary, champion)]
        signals.append(business_signal(joined[0], joined[1], settings.alpha, business_name))
    worse = [s.name for s in signals if s.worse]
    if worse:
        return CanaryAnalysis(STOP, f"significantly worse than the champion on {', '.join(worse)}", *counts,
                              tuple(signals))
    if minutes_since < settings.min_minutes:
        return CanaryAnalysis(CONTINUE, f"no signal worse yet; it needs {settings.min_minutes:g} min at this share",
                              *counts, tuple(signals))
    return CanaryAnalysis(PROMOTE, "no signal significantly worse after enough requests and time", *counts,
                          tuple(signals))


def next_share(ramp: Sequence[int], current: float) -> float | None:
    """The ramp's next step above ``current`` (None: the ramp is done, promote to champion)."""
    above = [float(step) for step in ramp if step > current + 1e-9]
    return above[0] if above else None
