"""The canary analysis's statistics on generated log windows (fast, pure): each bad canary is stopped by one
analysis of enough traffic, a good one is promoted, and too little traffic or time is never judged."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from mlplatform.lib.rollout_analysis import (
    CONTINUE,
    PROMOTE,
    STOP,
    AnalysisSettings,
    analyse,
    next_share,
    two_proportion_p,
)

NOW = datetime(2026, 12, 5, 12, 0)
SETTINGS = AnalysisSettings(min_requests=200, min_minutes=30, alpha=0.01)


def arm(role: str, version: str, n: int, seed: int, error_rate: float = 0.01, latency_scale: float = 1.0,
        score_shift: float = 0.0, task: str = "binary") -> pd.DataFrame:
    """``n`` one-record requests of one arm over the last hour: errors, latencies (ms) and scores as asked."""
    rng = np.random.default_rng(seed)
    status = np.where(rng.random(n) < error_rate, 500, 200)
    score = np.clip(rng.beta(2, 5, n) + score_shift, 0, 1)
    label = (np.array(["a", "b", "c"])[np.minimum((score * 3).astype(int), 2)] if task == "multiclass"
             else np.where(score >= 0.5, "yes", "no"))
    return pd.DataFrame({
        "request_id": [f"{role}-{seed}-{i}" for i in range(n)], "record_index": 0,
        "time": [NOW - timedelta(minutes=59) + timedelta(seconds=3500 * i / n) for i in range(n)],
        "version": version, "role": role, "status": status,
        "latency_ms": rng.gamma(4, 1.0, n) * latency_scale,
        "score": np.where(status == 200, score, np.nan), "label": np.where(status == 200, label, None)})


def window(n: int = 1000, seed: int = 1, **canary) -> pd.DataFrame:
    task = canary.get("task", "binary")
    return pd.concat([arm("champion", "1", 9 * n, seed, task=task), arm("canary", "2", n, seed + 100, **canary)],
                     ignore_index=True)


def judge(logged: pd.DataFrame, task: str = "binary", **kwargs):
    return analyse(task, logged, "2", "1", NOW - timedelta(minutes=60), NOW, SETTINGS, **kwargs)


def test_a_good_canary_is_promoted_after_enough_requests_and_time():
    verdict = judge(window())
    assert verdict.decision == PROMOTE, verdict.text()
    assert {s.name for s in verdict.signals} == {"error rate", "latency p99", "predictions"}
    assert not any(s.worse for s in verdict.signals)
    assert verdict.canary_requests == 1000 and verdict.champion_requests == 9000


@pytest.mark.parametrize("canary, signal", [
    ({"error_rate": 0.05}, "error rate"),  # 5x the champion's
    ({"latency_scale": 2.0}, "latency p99"),  # doubled
    ({"score_shift": 0.2}, "predictions"),
])
def test_a_worse_canary_is_stopped_by_one_analysis_naming_the_signal(canary, signal):
    verdict = judge(window(**canary))
    assert verdict.decision == STOP, verdict.text()
    assert [s.name for s in verdict.signals if s.worse] == [signal]
    assert signal in verdict.reason and "WORSE" in verdict.text()


def test_shifted_class_shares_stop_a_multiclass_canary_and_a_small_shift_does_not():
    assert judge(window(task="multiclass", score_shift=0.25), task="multiclass").decision == STOP
    assert judge(window(task="multiclass", score_shift=0.01), task="multiclass").decision == PROMOTE


def test_nothing_is_judged_on_too_little_traffic_or_too_early():
    few = window(n=100, error_rate=0.5)  # 100 canary requests: below min_requests
    assert judge(few).decision == CONTINUE and "too little traffic" in judge(few).reason
    early = analyse("binary", window(n=3000), "2", "1", NOW - timedelta(minutes=10), NOW, SETTINGS)
    assert early.decision == CONTINUE and "30 min" in early.reason  # rows before the share began are not counted
    assert analyse("binary", window(), "1", "1", None, NOW, SETTINGS).decision == CONTINUE  # no canary


def test_small_jitter_and_a_few_slow_requests_do_not_stop_a_canary():
    logged = window(latency_scale=1.1)
    canary = logged["role"] == "canary"
    logged.loc[logged.index[canary][:3], "latency_ms"] = 500.0  # three outliers
    assert judge(logged).decision == PROMOTE


def test_a_canary_with_a_lower_click_through_rate_is_stopped_once_clicks_arrive():
    logged = window(n=2000)
    rng = np.random.default_rng(5)
    ctr = np.where(logged["role"] == "canary", 0.06, 0.10)
    outcomes = logged[["request_id", "record_index"]].assign(outcome=(rng.random(len(logged)) < ctr).astype(int))
    verdict = judge(logged, outcomes=outcomes, business_name="click-through rate")
    assert verdict.decision == STOP and verdict.reason.endswith("click-through rate")
    same = outcomes.assign(outcome=(rng.random(len(logged)) < 0.10).astype(int))
    assert judge(logged, outcomes=same, business_name="click-through rate").decision == PROMOTE


def test_two_proportion_test_and_ramp_steps():
    assert two_proportion_p(50, 1000, 10, 1000) < 1e-6
    assert two_proportion_p(10, 1000, 50, 1000) > 0.99
    assert two_proportion_p(0, 10, 0, 10) == 1.0
    assert next_share([5, 25, 50], 5) == 25 and next_share([5, 25, 50], 10) == 25
    assert next_share([5, 25, 50], 50) is None and next_share([], 10) is None
