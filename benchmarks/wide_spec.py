"""How time and memory grow with the number of features: the measurement behind ``features`` limit (MAX_FEATURES).

One Dagster run of a synthetic model's whole group (raw, features, model + evaluation + backtest, drift with
its Evidently HTML report, the rest) over a few weeks, in this process, for a spec of ``--features`` numeric
and categorical features (about 3:1); prints the validate time, the run's wall time, each step's time and the
process's peak resident memory. Run one width per process, so the peak is that width's:

    .venv/bin/python benchmarks/wide_spec.py --features 1000 [--weeks 4 --rows-per-week 75]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SPEC = """
name: wide
task: regression
source: {{path: wide.csv, timestamp: ts, key: [id]}}
target: y
features:
  numeric: [{numeric}]
  categorical: [{categorical}]
partitions: {{start: 2024-01-01, end: {end}, training_window_weeks: 1}}
gates: {{training_data: {{enabled: false}}}}
drift: {{method: {method}}}
rollout: {{approval: auto}}
"""


def wide_rows(features: int, weeks: int, rows_per_week: int, seed: int = 0) -> tuple[pd.DataFrame, list, list]:
    rng = np.random.default_rng(seed)
    n = weeks * rows_per_week
    categorical = [f"c{i}" for i in range(features // 4)]
    numeric = [f"n{i}" for i in range(features - len(categorical))]
    columns = {"id": np.arange(n),
               "ts": (pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n) * 7 * 86400 / rows_per_week, unit="s"))
               .strftime("%Y-%m-%d %H:%M:%S")}
    values = rng.normal(size=(n, len(numeric))).round(3)
    columns.update({name: values[:, i] for i, name in enumerate(numeric)})
    columns.update({name: rng.choice(["a", "b", "c"], n) for name in categorical})
    columns["y"] = (values[:, :5].sum(axis=1) + rng.normal(0, 0.1, n)).round(3)
    return pd.DataFrame(columns), numeric, categorical


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--weeks", type=int, default=4)
    parser.add_argument("--rows-per-week", type=int, default=75)
    parser.add_argument("--method", default="calibrated", choices=["calibrated", "evidently"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wide_spec_"))
    specs = work / "specs"
    specs.mkdir()
    frame, numeric, categorical = wide_rows(args.features, args.weeks, args.rows_per_week)
    frame.to_csv(specs / "wide.csv", index=False)
    end = (pd.Timestamp("2024-01-01") + pd.Timedelta(weeks=args.weeks)).date()
    (specs / "wide.yaml").write_text(SPEC.format(numeric=", ".join(numeric), categorical=", ".join(categorical),
                                                 end=end, method=args.method))
    os.environ.update(MLPLATFORM_HOME=str(work / "home"), MLPLATFORM_SPECS=str(specs),
                      MLPLATFORM_MAX_FEATURES=str(max(args.features, 1)))

    from dagster import DagsterInstance, instance_for_test

    from mlplatform.definitions import build_definitions
    from mlplatform.specs import load_specs

    started = time.perf_counter()
    load_specs(specs)
    validate_seconds = time.perf_counter() - started
    defs = build_definitions()
    weeks = [str((pd.Timestamp("2024-01-01") + pd.Timedelta(weeks=w)).date()) for w in range(args.weeks)]
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    with instance_for_test() as instance:
        assert isinstance(instance, DagsterInstance)
        job = defs.resolve_job_def("wide_pipeline")
        started = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, raise_on_error=False,
            tags={ASSET_PARTITION_RANGE_START_TAG: weeks[0], ASSET_PARTITION_RANGE_END_TAG: weeks[-1]},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        run_seconds = time.perf_counter() - started
        steps = {s.step_key: (s.end_time or 0) - (s.start_time or 0)
                 for s in instance.get_run_step_stats(result.run_id)}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reports = sorted((work / "home" / "reports" / "wide").glob("drift_*.html"))
    print(f"features={args.features} rows={len(frame)} weeks={args.weeks} method={args.method} "
          f"success={result.success}")
    print(f"validate {validate_seconds:.1f} s; run {run_seconds:.1f} s; peak RSS {peak_mb:.0f} MB; "
          f"drift HTML {sum(p.stat().st_size for p in reports) / 1e6:.1f} MB in {len(reports)} files")
    for key, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  {key}: {seconds:.1f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
