"""Our drift statistics vs Evidently's DataDriftPreset, on the same data, in one run.

For each size (rows per side; 20 columns: 14 numerical, 6 categorical; 4 of them shifted and
one moved just under the threshold) it times:
  evidently: Report([DataDriftPreset()]).run(current, reference), per-column verdicts read from the report;
  ours:      profile_reference(reference) + dataset_drift(profile, current)  (a cold start);
  ours warm: dataset_drift(profile, current) with the reference profiled already, which is what
             every week after the first costs (the reference is fixed per champion);
  calibrated: calibrated_drift(profile, current) (drift.method: calibrated, the default), cold and warm;
and prints the times, the ratios against Evidently measured in the same run, how many per-feature
verdicts (and methods) of our Evidently rule agree with Evidently's, and what the calibrated method flags.

    python3 dev.py install && .venv/bin/python benchmarks/drift.py [--rows 100000 1000000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlplatform.lib.drift import calibrated_drift, dataset_drift, profile_reference  # noqa: E402
from mlplatform_tests.evidently_reference import evidently_columns, evidently_drifted  # noqa: E402

NUMERICAL = [f"n{i:02d}" for i in range(14)]
CATEGORICAL = [f"c{i}" for i in range(6)]


def synthetic(rows: int, shifted: bool, seed: int) -> pd.DataFrame:
    """Mixed columns; when ``shifted``, n00 and n01 move, n02 moves just under the threshold, c0 and c1 change mix."""
    rng = np.random.default_rng(seed)
    frame = {}
    for i, name in enumerate(NUMERICAL):
        kind = i % 4
        if kind == 0:
            values = rng.normal(0, 1, rows)
        elif kind == 1:
            values = rng.lognormal(0, 0.7, rows)
        elif kind == 2:
            values = rng.integers(0, 50, rows).astype(float)
        else:
            values = rng.uniform(-5, 5, rows)
        frame[name] = values
    if shifted:
        frame["n00"] = frame["n00"] + 0.5
        frame["n01"] = frame["n01"] * 1.6
        frame["n02"] = frame["n02"] + 1.2  # near the threshold: normed Wasserstein ~0.08 < 0.1, not drifted
    levels = [list("abc"), list("xyzw"), [f"k{j}" for j in range(12)], ["yes", "no"], list("pqrst"), ["u", "v", "w"]]
    for name, values in zip(CATEGORICAL, levels, strict=True):
        weights = np.linspace(1, 2, len(values))
        if shifted and name in {"c0", "c1"}:
            weights = weights[::-1] ** 3
        frame[name] = rng.choice(values, rows, p=weights / weights.sum())
    return pd.DataFrame(frame)


def measure(rows: int) -> None:
    reference = synthetic(rows, shifted=False, seed=1)
    current = synthetic(rows, shifted=True, seed=2)

    started = time.perf_counter()
    theirs = evidently_columns(reference, current, NUMERICAL, CATEGORICAL)
    evidently_seconds = time.perf_counter() - started

    started = time.perf_counter()
    profile = profile_reference(reference, NUMERICAL, CATEGORICAL)
    profile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ours = dataset_drift(profile, current, max_drifted_share=0.5)
    warm_seconds = time.perf_counter() - started
    cold_seconds = profile_seconds + warm_seconds

    started = time.perf_counter()
    calibrated = calibrated_drift(profile, current, max_drifted_share=0.5)
    calibrated_warm = time.perf_counter() - started
    calibrated_cold = profile_seconds + calibrated_warm

    from mlplatform.lib.drift import THRESHOLDS

    agree_verdict = agree_method = 0
    disagreements = []
    for column in ours.columns:
        method, score = theirs[column.column]
        their_verdict = evidently_drifted(method, score, THRESHOLDS.get(method, column.threshold))
        agree_method += method == column.method
        agree_verdict += their_verdict == column.drifted
        if their_verdict != column.drifted or method != column.method:
            disagreements.append(f"{column.column}: ours {column.method} {column.score:.4g} -> {column.drifted}; "
                                 f"evidently {method} {score:.4g} -> {their_verdict}")
    print(f"== {rows:,} rows per side x {len(NUMERICAL) + len(CATEGORICAL)} columns "
          f"({len(NUMERICAL)} numerical, {len(CATEGORICAL)} categorical)")
    print(f"evidently DataDriftPreset:            {evidently_seconds:8.2f} s")
    print(f"ours, cold (profile + compare):       {cold_seconds:8.2f} s   ratio evidently/ours {evidently_seconds / cold_seconds:6.1f}x")
    print(f"ours, warm (reference profiled once): {warm_seconds:8.2f} s   ratio evidently/ours {evidently_seconds / warm_seconds:6.1f}x")
    print(f"calibrated, cold (profile + compare): {calibrated_cold:8.2f} s   ratio evidently/calibrated "
          f"{evidently_seconds / calibrated_cold:6.1f}x")
    print(f"calibrated, warm:                     {calibrated_warm:8.2f} s   ratio evidently/calibrated "
          f"{evidently_seconds / calibrated_warm:6.1f}x")
    print(f"calibrated drifted: {', '.join(c.column for c in calibrated.drifted)} (tests: "
          f"{', '.join(sorted({c.method for c in calibrated.columns}))}; n02's shift has effect "
          f"{next(c.effect for c in calibrated.columns if c.column == 'n02'):.3f})")
    print(f"per-feature verdicts equal: {agree_verdict}/{len(ours.columns)}; methods equal: {agree_method}/{len(ours.columns)}; "
          f"drifted: {', '.join(c.column for c in ours.drifted)}")
    for line in disagreements:
        print(f"  DIFFERENT {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    for rows in args.rows:
        measure(rows)


if __name__ == "__main__":
    main()
