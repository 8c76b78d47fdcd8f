"""What does the platform cost on top of the model work itself?

Measures, in one process on the same synthetic data:
  platform: one Dagster run of a model's whole group (raw -> features -> drift, model + evaluation + gates
            + aliases + backtest) over K weeks, each week's model trained on the N weeks before it;
  baseline: a plain scikit-learn script doing the same fits and predictions (and the primary metric)
            on the same rows read from the same file, run just before and just after the platform (mean).
and prints both times, per week, and the ratio; also without the drift step (the model lifecycle alone).
It also prints the CPU time each side used (this process and its worker processes, core-seconds):
CPU time / cores is the least wall time this machine could take for that work, however well packed.
Untimed warm-up: the N weeks' data and one model week, so both sides start warm (imports done,
MLflow store created); those one-off costs and the code-location load are printed separately.
The platform trains a run's weeks in worker processes when the window is big (see
MLPLATFORM_TRAINING_WORKERS); set it to 1 to measure training in the run's own process.

    python3 dev.py install && .venv/bin/python benchmarks/pipeline_overhead.py [--weeks 12] [--rows-per-week 12500]

With ``--warehouse postgres`` it compares the warehouses instead (a throwaway PostgreSQL from Debian's binaries is
started unless ``--warehouse-url`` names one): the same model backfill on DuckDB and on PostgreSQL in this process,
per week (the difference is PostgreSQL's bookkeeping; ``--pairs`` measurements in alternating order, the median
difference reported), then two models' backfills on PostgreSQL one after the other, at once, and at once with each
run's share of the cores (``MLPLATFORM_THREADS_PER_RUN``), each backfill in its own process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

START = pd.Timestamp("2024-01-01")
SPEC = """
name: bench
task: regression
source: {{path: bench.parquet, timestamp: ts, key: [id]}}
target: y
features:
  numeric: [n1, n2, n3, n4, n5, n6]
  categorical: [c1, c2, c3]
partitions: {{start: 2024-01-01, end: {end}, training_window_weeks: {window}}}
estimator:
  class: sklearn.ensemble.HistGradientBoostingRegressor
  params: {{max_iter: 100}}
rollout: {{approval: auto}}
"""


def synthetic(weeks: int, rows_per_week: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = weeks * rows_per_week
    frame = pd.DataFrame({
        "id": np.arange(n),
        "ts": START + pd.to_timedelta(np.sort(rng.uniform(0, weeks * 7 * 86400, n)), unit="s"),
        **{f"n{i}": rng.normal(size=n) for i in range(1, 7)},
        "c1": rng.choice(["a", "b", "c"], n), "c2": rng.choice(["x", "y"], n), "c3": rng.choice(list("pqrstu"), n),
    })
    frame["y"] = (3 * frame["n1"] - 2 * frame["n2"] + frame["n3"] * frame["n4"] + (frame["c1"] == "a") * 2
                  + rng.normal(0, 0.5, n))
    return frame


def baseline(path: Path, eval_weeks: list[pd.Timestamp], window: int) -> float:
    """The plain script: read, then per week fit on the window before it, predict the week, score it."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import root_mean_squared_error
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    started = time.perf_counter()
    frame = pd.read_parquet(path)
    numeric, categorical = [f"n{i}" for i in range(1, 7)], ["c1", "c2", "c3"]
    for week in eval_weeks:
        train = frame[(frame.ts >= week - pd.Timedelta(weeks=window)) & (frame.ts < week)]
        test = frame[(frame.ts >= week) & (frame.ts < week + pd.Timedelta(weeks=1))]
        model = Pipeline([
            ("preprocess", ColumnTransformer([
                ("numeric", SimpleImputer(strategy="median"), numeric),
                ("categorical", Pipeline([("impute", SimpleImputer(strategy="constant", fill_value="(missing)")),
                                          ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False))]),
                 categorical),
            ])),
            ("estimator", HistGradientBoostingRegressor(max_iter=100, random_state=0)),
        ])
        model.fit(train[numeric + categorical], train["y"])
        root_mean_squared_error(test["y"], model.predict(test[numeric + categorical]))
    return time.perf_counter() - started


def cpu_seconds() -> float:
    """CPU time of this process and every process it started (waited for, or still running: the workers).

    Linux only (reads /proc for the running descendants); NaN elsewhere.
    """
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return float("nan")
    parents, ticks = {}, {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        pid = int(stat.parent.name)
        parents[pid], ticks[pid] = int(fields[1]), int(fields[11]) + int(fields[12])  # ppid; utime + stime
    family = {os.getpid()}
    grew = True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in family} - family
        family |= found
        grew = bool(found)
    return total + sum(ticks[pid] for pid in family - {os.getpid()}) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weeks", type=int, default=12, help="evaluated weeks K (one backfill run)")
    parser.add_argument("--window", type=int, default=8, help="training window N (weeks)")
    parser.add_argument("--rows-per-week", type=int, default=12_500, help="rows per week (window rows = N x this)")
    parser.add_argument("--warehouse", choices=["duckdb", "postgres"], default="duckdb",
                        help="postgres: compare the warehouses (see above) instead of platform vs baseline")
    parser.add_argument("--pairs", type=int, default=5, help="with --warehouse postgres: DuckDB/PostgreSQL measurement "
                        "pairs, in alternating order (the median difference is reported; 0: only the two-model part)")
    parser.add_argument("--warehouse-url", default="", help="a PostgreSQL server to use (a database per measurement "
                        "is created on it); default: start a throwaway one")
    args = parser.parse_args()
    if args.warehouse == "postgres":
        compare_warehouses(args)
        return

    folder = Path(tempfile.mkdtemp(prefix="mlplatform-bench-"))
    total_weeks = args.window + 1 + args.weeks
    end = (START + pd.Timedelta(weeks=total_weeks)).date()
    synthetic(total_weeks, args.rows_per_week).to_parquet(folder / "bench.parquet", index=False)
    (folder / "bench.yaml").write_text(SPEC.format(end=end, window=args.window))
    os.environ["MLPLATFORM_HOME"] = str(folder / "home")
    os.environ["MLPLATFORM_SPECS"] = str(folder)

    from dagster import AssetKey, instance_for_test
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from mlplatform.lib.lifecycle import training_workers

    started = time.perf_counter()
    from mlplatform.definitions import build_definitions

    defs = build_definitions()
    load_seconds = time.perf_counter() - started
    job = defs.resolve_job_def("bench_pipeline")
    keys = job.partitions_def.get_partition_keys()
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    step_seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def run(first: str, last: str, assets: list[str] | None = None) -> float:
        tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
        selection = [AssetKey(["bench", a]) for a in assets] if assets else None
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        result = job.execute_in_process(instance=instance, tags=tags, run_config=quiet, asset_selection=selection)
        cpu["platform"] = cpu_seconds() - cpu0
        assert result.success
        step_seconds.clear()
        for event in result.all_events:
            if event.event_type_value == "STEP_SUCCESS":
                step_seconds[event.step_key] = event.event_specific_data.duration_ms / 1000
        return time.perf_counter() - t0

    eval_weeks = [pd.Timestamp(k) for k in keys[args.window + 1:]]
    with instance_for_test() as instance:
        run(keys[0], keys[args.window - 1], ["raw", "features"])  # warm-up: the first window's data
        first_model_seconds = run(keys[args.window], keys[args.window])  # warm-up: imports, MLflow store
        # The baseline runs just before and just after the platform, and their mean is the reference:
        # on a shared machine the speed drifts by 10-20% over minutes.
        cpu0 = cpu_seconds()
        baseline_runs = [baseline(folder / "bench.parquet", eval_weeks, args.window)]
        cpu["baseline"] = cpu_seconds() - cpu0
        platform_seconds = run(keys[args.window + 1], keys[-1])
        cpu0 = cpu_seconds()
        baseline_runs.append(baseline(folder / "bench.parquet", eval_weeks, args.window))
        cpu["baseline"] = (cpu["baseline"] + cpu_seconds() - cpu0) / 2
    baseline_seconds = sum(baseline_runs) / len(baseline_runs)

    k = args.weeks
    workers = training_workers(k, args.window * args.rows_per_week)
    print(f"rows per week {args.rows_per_week:,}, training window {args.window} weeks "
          f"({args.window * args.rows_per_week:,} rows), K={k} evaluated weeks, "
          f"training in {'the run process' if workers == 1 else f'{workers} worker processes'}")
    print(f"code-location load (once per process):          {load_seconds:6.2f} s")
    print(f"first model week (imports, new MLflow store):   {first_model_seconds:6.2f} s  (warm-up, untimed)")
    print(f"platform: one run, data+model+gates+backtest:   {platform_seconds:6.2f} s  ({platform_seconds / k:.2f} s/week)")
    print(f"baseline: plain scikit-learn script:            {baseline_seconds:6.2f} s  ({baseline_seconds / k:.2f} s/week; "
          f"mean of {baseline_runs[0]:.2f} s before and {baseline_runs[1]:.2f} s after)")
    for step, seconds in step_seconds.items():
        print(f"  step {step:<40} {seconds:6.2f} s")
    print(f"ratio platform / baseline:                      {platform_seconds / baseline_seconds:6.2f}x")
    drift_seconds = sum(s for step, s in step_seconds.items() if step.endswith("_drift"))
    without_drift = platform_seconds - drift_seconds
    print(f"ratio without the drift step (model lifecycle): {without_drift / baseline_seconds:6.2f}x  "
          f"({without_drift / k:.2f} s/week)")
    cores = os.cpu_count() or 1
    print(f"CPU time, platform (run process + workers):     {cpu['platform']:6.2f} core-s ({cpu['platform'] / k:.2f}/week)")
    print(f"CPU time, baseline (mean):                      {cpu['baseline']:6.2f} core-s ({cpu['baseline'] / k:.2f}/week)")
    print(f"least possible ratio on {cores} cores (platform CPU / {cores} / baseline time): "
          f"{cpu['platform'] / cores / baseline_seconds:.2f}x")


BACKFILL = """
import sys, time
from dagster import DagsterInstance
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mlplatform.definitions import build_definitions

model, first, last = sys.argv[1:4]
job = build_definitions().resolve_job_def(f"{model}_pipeline")
with DagsterInstance.ephemeral() as instance:
    tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
    result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False,
                                    run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
sys.exit(0 if result.success else 1)
"""


def compare_warehouses(args: argparse.Namespace) -> None:
    """DuckDB against PostgreSQL: one model's per-week time in this process, then two models at once vs in turn."""
    import contextlib
    import subprocess
    import sys

    from mlplatform.lib.settings import export_warehouse_url

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    folder = Path(tempfile.mkdtemp(prefix="mlplatform-bench-pg-"))
    total_weeks = args.window + 1 + args.weeks
    end = (START + pd.Timedelta(weeks=total_weeks)).date()
    synthetic(total_weeks, args.rows_per_week).to_parquet(folder / "bench.parquet", index=False)
    for name in ("bench", "bench_b"):
        (folder / f"{name}.yaml").write_text(SPEC.format(end=end, window=args.window).replace("name: bench",
                                                                                               f"name: {name}"))
    os.environ["MLPLATFORM_SPECS"] = str(folder)
    with contextlib.ExitStack() as stack:
        if args.warehouse_url:
            def database(name: str) -> str:
                import psycopg2

                admin = psycopg2.connect(args.warehouse_url)
                admin.autocommit = True
                admin.cursor().execute(f'drop database if exists "{name}"')
                admin.cursor().execute(f'create database "{name}"')
                admin.close()
                return args.warehouse_url.rsplit("/", 1)[0] + f"/{name}"
        else:
            from mlplatform_tests.services import running_postgres, traversable_tmp_dir

            server = stack.enter_context(running_postgres(stack.enter_context(traversable_tmp_dir("bench-pg"))))
            database = server.create_database

        from dagster import AssetKey, instance_for_test
        from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

        from mlplatform.definitions import build_definitions

        quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
        os.environ["MLPLATFORM_HOME"] = str(folder / "home-keys")
        keys = build_definitions().resolve_job_def("bench_pipeline").partitions_def.get_partition_keys()

        def per_week_seconds(backend: str, pair: int) -> float:
            """One fresh measurement: a new home and database, the same warm-ups, then the K weeks in one run."""
            os.environ["MLPLATFORM_HOME"] = str(folder / f"home-{backend}-{pair}")
            export_warehouse_url(database(f"bench_one_{pair}") if backend == "postgres" else "")
            job = build_definitions().resolve_job_def("bench_pipeline")
            with instance_for_test() as instance:
                def run(first: str, last: str, assets: list[str] | None = None) -> float:
                    tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
                    selection = [AssetKey(["bench", a]) for a in assets] if assets else None
                    t0 = time.perf_counter()
                    result = job.execute_in_process(instance=instance, tags=tags, run_config=quiet,  # noqa: B023
                                                    asset_selection=selection)
                    assert result.success
                    return time.perf_counter() - t0

                run(keys[0], keys[args.window - 1], ["raw", "features"])  # warm-up: the first window's data
                run(keys[args.window], keys[args.window])  # warm-up: imports, MLflow store
                return run(keys[args.window + 1], keys[-1]) / args.weeks

        # Pairs in alternating order (DuckDB first, then PostgreSQL first, ...), so a drift of the machine's speed
        # during the run does not land on one backend; the median of the pairs' differences is the figure.
        seconds: dict[str, list[float]] = {"duckdb": [], "postgres": []}
        print(f"rows per week {args.rows_per_week:,}, training window {args.window} weeks, K={args.weeks} weeks, "
              f"{args.pairs} pairs")
        for pair in range(args.pairs):
            order = ("duckdb", "postgres") if pair % 2 == 0 else ("postgres", "duckdb")
            measured = {backend: per_week_seconds(backend, pair) for backend in order}
            for backend, value in measured.items():
                seconds[backend].append(value)
            print(f"  pair {pair + 1} ({order[0]} first): per week DuckDB {measured['duckdb']:.2f} s, "
                  f"PostgreSQL {measured['postgres']:.2f} s, difference {measured['postgres'] - measured['duckdb']:+.2f} s",
                  flush=True)
        differences = [pg - duck for duck, pg in zip(seconds["duckdb"], seconds["postgres"], strict=True)]
        if differences:
            print(f"one model, one run, per week (median of {args.pairs}): DuckDB "
                  f"{statistics.median(seconds['duckdb']):.2f} s, PostgreSQL {statistics.median(seconds['postgres']):.2f} s;"
                  f" PostgreSQL's bookkeeping: median difference {statistics.median(differences):+.2f} s/week "
                  f"(pairs range {min(differences):+.2f} to {max(differences):+.2f})")

        def backfills(url: str, together: bool, threads: int | None = None) -> float:
            env = {**os.environ, "MLPLATFORM_HOME": str(folder / f"home-two-{together}-{threads}"),
                   "MLPLATFORM_WAREHOUSE_URL": url, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            if threads is not None:  # what the shared mode sets by itself: the run's share of the cores for its fits
                env["MLPLATFORM_THREADS_PER_RUN"] = str(threads)
            t0 = time.perf_counter()
            processes = []
            for model in ("bench", "bench_b"):
                process = subprocess.Popen([sys.executable, "-c", BACKFILL, model, keys[0], keys[-1]], env=env)
                if not together:
                    assert process.wait() == 0, f"{model} backfill failed"
                processes.append(process)
            assert all(p.wait() == 0 for p in processes), "a backfill failed"
            return time.perf_counter() - t0

        per_run = max(1, (os.cpu_count() or 2) // 2)
        one_after_other = backfills(database("bench_turns"), together=False)
        at_once = backfills(database("bench_together"), together=True)
        at_once_sized = backfills(database("bench_together_sized"), together=True, threads=per_run)
        print(f"two models' backfills ({len(keys)} weeks each) on PostgreSQL: one after the other {one_after_other:.1f} s,"
              f" at once {at_once:.1f} s ({one_after_other / at_once:.2f}x), at once with MLPLATFORM_THREADS_PER_RUN={per_run}"
              f" (cores / 2) {at_once_sized:.1f} s ({one_after_other / at_once_sized:.2f}x)")


if __name__ == "__main__":
    main()
