"""False alarms of the two drift methods on data with no drift by construction, and detection of a real drift.

Time-shuffle protocol: the time column is shuffled across rows, so every week is a random draw from the
same data (no drift by construction) while each week keeps its row count. Each week W is compared with
the 8 weeks before it (the reference is profiled once per week, shared by both methods), with the
features of the bundled specs (mlplatform/examples/*.yaml) and a generated dataset of ~30 rows a week.
For every dataset and method it prints: the share of weeks whose check fails (false alarms), the share
of per-feature verdicts that say drifted (false verdicts), and the time per week. Then, unshuffled,
car_loan's weeks around its change on 2019-04-01 (the first alarm after it), and the generated dataset
with a shift injected into two features.

    python3 dev.py install && .venv/bin/python benchmarks/drift_false_alarms.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlplatform.lib.drift import CALIBRATED, EVIDENTLY, drift_report, profile_reference  # noqa: E402
from mlplatform.lib.drift_calibrated import CalibratedSettings  # noqa: E402

EXAMPLES = ROOT / "mlplatform" / "examples"
METHODS = (EVIDENTLY, CALIBRATED)
REFERENCE_WEEKS = 8
MAX_DRIFTED_SHARE = 0.3  # both bundled specs


def spec_features(name: str) -> tuple[list[str], list[str], str, Path]:
    spec = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return (spec["features"]["numeric"], spec["features"].get("categorical", []), spec["source"]["timestamp"],
            EXAMPLES / spec["source"]["path"])


def load(name: str) -> tuple[pd.DataFrame, list[str], list[str], str]:
    numerical, categorical, time_column, path = spec_features(name)
    frame = pd.read_csv(path, parse_dates=[time_column])
    frame[categorical] = frame[categorical].astype(str)  # as the features table types them (text)
    return frame, numerical, categorical, time_column


def generated(seed: int = 0, weeks: int = 70, per_week: int = 30, shift_from: int | None = None) -> pd.DataFrame:
    """~30 rows a week (Poisson), mixed columns; from week ``shift_from`` three of the seven move (when given)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(per_week, weeks)
    start = pd.Timestamp("2024-01-01")
    times = np.concatenate([start + pd.Timedelta(weeks=w) + pd.to_timedelta(rng.uniform(0, 7, c), unit="D")
                            for w, c in enumerate(counts)])
    n = len(times)
    frame = pd.DataFrame({
        "ts": times, "amount": rng.lognormal(3, 0.8, n), "score": rng.normal(600, 50, n),
        "items": rng.poisson(3, n).astype(float), "age": rng.integers(18, 80, n).astype(float),
        "channel": rng.choice(["web", "app", "store"], n, p=[0.5, 0.3, 0.2]),
        "region": rng.choice(["north", "south", "east", "west", "island"], n, p=[0.3, 0.3, 0.2, 0.17, 0.03]),
        "member": rng.choice(["yes", "no"], n),
    })
    if shift_from is not None:
        late = frame["ts"] >= start + pd.Timedelta(weeks=shift_from)
        frame.loc[late, "score"] += 50  # one standard deviation
        frame.loc[late, "amount"] *= 2  # log-amount up by 0.87 of its standard deviation
        frame.loc[late, "channel"] = rng.choice(["web", "app", "store"], int(late.sum()), p=[0.2, 0.3, 0.5])
    return frame


GENERATED = (["amount", "score", "items", "age"], ["channel", "region", "member"], "ts")


def weeks_of(frame: pd.DataFrame, time_column: str) -> list[pd.Timestamp]:
    """Mondays from the first full reference window on, up to the last full week."""
    first = frame[time_column].min().normalize()
    first -= pd.Timedelta(days=first.weekday())
    first += pd.Timedelta(weeks=1)  # the first full week
    last = frame[time_column].max().normalize() - pd.Timedelta(days=6)
    return list(pd.date_range(first + pd.Timedelta(weeks=REFERENCE_WEEKS), last, freq="W-MON"))


def run_weeks(frame: pd.DataFrame, numerical: list[str], categorical: list[str], time_column: str,
              settings: CalibratedSettings) -> dict:
    """Both methods on every week against its 8 weeks before; verdicts and seconds per method."""
    times = frame[time_column]
    out = {m: {"alarms": [], "drifted": 0, "tested": 0, "seconds": 0.0, "drifted_features": {}} for m in METHODS}
    week_rows, profile_seconds = [], 0.0
    for week in weeks_of(frame, time_column):
        reference = frame[(times >= week - pd.Timedelta(weeks=REFERENCE_WEEKS)) & (times < week)]
        current = frame[(times >= week) & (times < week + pd.Timedelta(weeks=1))]
        if current.empty or reference.empty:
            continue
        week_rows.append(len(current))
        started = time.perf_counter()
        profile = profile_reference(reference, numerical, categorical)
        profile_seconds += time.perf_counter() - started
        for method in METHODS:
            started = time.perf_counter()
            report = drift_report(method, profile, current, MAX_DRIFTED_SHARE, settings)
            out[method]["seconds"] += time.perf_counter() - started
            if not report.passed:
                out[method]["alarms"].append(f"{week:%Y-%m-%d}")
            out[method]["drifted"] += len(report.drifted)
            out[method]["tested"] += len(report.columns)
            out[method]["drifted_features"][f"{week:%Y-%m-%d}"] = [c.column for c in report.drifted]
    for method in METHODS:
        out[method]["seconds"] += profile_seconds
    out["weeks"], out["week_rows"] = len(week_rows), week_rows
    return out


def shuffled(frame: pd.DataFrame, time_column: str, seed: int) -> pd.DataFrame:
    """The time column permuted across rows: no drift by construction, every week keeps its row count."""
    frame = frame.copy()
    frame[time_column] = np.random.default_rng(seed).permutation(frame[time_column].to_numpy())
    return frame


def false_alarms(name: str, frame: pd.DataFrame, numerical: list[str], categorical: list[str], time_column: str,
                 seeds: int, settings: CalibratedSettings) -> None:
    totals = {m: {"alarms": 0, "weeks": 0, "drifted": 0, "tested": 0, "seconds": 0.0} for m in METHODS}
    week_rows = []
    for seed in range(seeds):
        result = run_weeks(shuffled(frame, time_column, seed), numerical, categorical, time_column, settings)
        week_rows += result["week_rows"]
        for method in METHODS:
            totals[method]["alarms"] += len(result[method]["alarms"])
            totals[method]["weeks"] += result["weeks"]
            for key in ("drifted", "tested", "seconds"):
                totals[method][key] += result[method][key]
    print(f"== {name}: time-shuffled, {seeds} seeds x {totals[EVIDENTLY]['weeks'] // seeds} weeks, "
          f"rows a week median {int(np.median(week_rows))} (min {min(week_rows)}, max {max(week_rows)}), "
          f"{len(numerical)} numerical + {len(categorical)} categorical features, reference {REFERENCE_WEEKS} weeks")
    for method in METHODS:
        t = totals[method]
        print(f"   {method:<10} weeks alarming {t['alarms']:4d}/{t['weeks']:<4d} = {t['alarms'] / t['weeks']:6.1%}   "
              f"false feature verdicts {t['drifted'] / t['tested']:6.2%}   "
              f"{1000 * t['seconds'] / t['weeks']:7.1f} ms a week (profile + compare)")
    ratio = totals[CALIBRATED]["seconds"] / totals[EVIDENTLY]["seconds"]
    print(f"   time calibrated / evidently rule (same run): {ratio:.2f}x")


def real_drift(name: str, frame: pd.DataFrame, numerical: list[str], categorical: list[str], time_column: str,
               change: str, settings: CalibratedSettings, show_from: str, show_to: str) -> None:
    result = run_weeks(frame, numerical, categorical, time_column, settings)
    print(f"== {name}: unshuffled, change on {change}; alarms between {show_from} and {show_to}")
    for method in METHODS:
        alarms = [w for w in result[method]["alarms"] if show_from <= w < show_to]
        first = next((w for w in result[method]["alarms"] if w >= change), None)
        before = [w for w in result[method]["alarms"] if w < change]
        soon = pd.date_range(change, periods=4, freq="7D").strftime("%Y-%m-%d")
        caught = sum(w in result[method]["alarms"] for w in soon)
        shown = ", ".join(f"{w} ({'+'.join(result[method]['drifted_features'][w])})" for w in alarms[:8])
        print(f"   {method:<10} first alarm on/after {change}: {first}; alarms before it: {len(before)}; "
              f"alarming among the 4 weeks from the change: {caught}/4; "
              f"shown: {shown}{' ...' if len(alarms) > 8 else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    settings = CalibratedSettings()
    print(f"calibrated settings: {settings}")
    started = time.perf_counter()
    datasets = {"bikeshare (bike_demand)": load("bike_demand"), "car_loan": load("car_loan"),
                "generated (~30 rows a week)": (generated(), *GENERATED)}
    for name, (frame, numerical, categorical, time_column) in datasets.items():
        false_alarms(name, frame, numerical, categorical, time_column, args.seeds, settings)
    frame, numerical, categorical, time_column = datasets["car_loan"]
    real_drift("car_loan", frame, numerical, categorical, time_column, "2019-04-01", settings, "2019-03-04", "2019-05-06")
    real_drift("generated, score +1 sd, amount x2, channel mix moved from week 40", generated(shift_from=40), *GENERATED,
               "2024-10-07", settings, "2024-09-09", "2024-12-02")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
