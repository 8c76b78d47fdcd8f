"""Weekly raw -> (dbt staged) -> features on a real Dagster instance and a real DuckDB warehouse."""

from __future__ import annotations

import pandas as pd
import pytest

from mlplatform.lib.warehouse import postgres_url
from mlplatform_tests.conftest import TOY_SPEC, copy_file, toy_rows
from mlplatform_tests.helpers import (
    check_record,
    load_definitions,
    materialized_partitions,
    run_weeks,
    warehouse_query,
)

pytestmark = pytest.mark.usefixtures("warehouse_backend")

WEEK2 = "2024-01-08"


def week2_mask(frame: pd.DataFrame) -> pd.Series:
    ts = pd.to_datetime(frame["ts"])
    return (ts >= "2024-01-08") & (ts < "2024-01-15")


@pytest.mark.postgres_extended
def test_rows_at_week_boundaries_land_in_the_right_partition(home, spec_dir, instance):
    frame = toy_rows(weeks=2, per_week=4)
    frame.loc[0, "ts"] = "2024-01-07 23:59:59"  # Sunday night: week of 2024-01-01
    frame.loc[1, "ts"] = "2024-01-08 00:00:00"  # Monday midnight: week of 2024-01-08
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": frame})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, "2024-01-01").success
    assert run_weeks(defs, "toy", instance, WEEK2).success
    raw = warehouse_query(home, "select id, ts from toy.raw")
    week_of = {row.id: ("2024-01-01" if row.ts < pd.Timestamp(WEEK2) else WEEK2) for row in raw.itertuples()}
    assert week_of[0] == "2024-01-01"
    assert week_of[1] == WEEK2
    assert sorted(raw["id"]) == sorted(frame["id"])  # every row in exactly one week


def test_full_backfill_of_bundled_examples_in_one_run_keeps_every_row(home, bundled_specs, instance, shared_dataset):
    defs = load_definitions()
    for model, first, last, source, time_column in [
        ("bike_demand", "2010-12-27", "2011-12-26", "bikeshare.csv.gz", "date"),
        ("car_loan", "2018-10-01", "2019-08-26", "car_loan.csv.gz", "timestamp"),  # the file starts 2018-01
    ]:
        tables = ["raw", "staged", "features"] if model == "bike_demand" else ["raw", "features"]
        result = run_weeks(defs, model, instance, first, last, assets=tables)  # the data part; models: test_cli
        assert result.success
        assert len(instance.get_runs()) >= 1
        source = pd.read_csv(shared_dataset(source))
        source_rows = int((pd.to_datetime(source[time_column]) >= pd.Timestamp(first)).sum())  # rows of the spec's weeks
        for table in tables:
            count = warehouse_query(home, f"select count(*) as n from {model}.{table}")["n"].item()
            assert count == source_rows, f"{model}.{table}"
        assert len(materialized_partitions(instance, [model, "features"])) == len(
            defs.resolve_job_def(f"{model}_pipeline").partitions_def.get_partition_keys()
        )
        assert check_record(instance, [model, "features"], "schema").evaluation.passed
    features = warehouse_query(home, "select * from bike_demand.features limit 5")
    assert list(features.columns) == ["date", "temp", "hum", "windspeed", "hr", "season", "weathersit", "workingday", "bikers"]
    assert set(warehouse_query(home, "select distinct season from bike_demand.features")["season"]) == {
        "winter", "spring", "summer", "fall"
    }


def test_materializing_a_week_twice_leaves_the_same_rows(home, spec_dir, instance):
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, WEEK2).success
    first = warehouse_query(home, "select * from toy.features order by id")
    assert run_weeks(defs, "toy", instance, WEEK2).success
    second = warehouse_query(home, "select * from toy.features order by id")
    assert len(first) == 40
    pd.testing.assert_frame_equal(first, second)
    assert warehouse_query(home, "select count(*) as n from toy.raw")["n"].item() == 40


def test_state_is_written_under_mlplatform_home_only(home, spec_dir, instance, tmp_path):
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    assert run_weeks(load_definitions(), "toy", instance, WEEK2).success
    assert list((tmp_path / "cwd").iterdir()) == []
    assert (home / "warehouse.duckdb").exists() or postgres_url() is not None


def corrupt(frame: pd.DataFrame, scenario: str) -> pd.DataFrame:
    """One bad value in week 2 (every other kind of damage is a pure test in test_validation.py)."""
    frame = frame.copy()
    first_bad = frame.index[week2_mask(frame)][3]
    if scenario == "wrong dtype":
        frame["x2"] = frame["x2"].astype(object)
        frame.loc[first_bad, "x2"] = "abc"
    elif scenario == "unknown category":
        frame.loc[first_bad, "color"] = "purple"
    return frame


@pytest.mark.parametrize(  # every kind of bad data, as pure functions: test_validation.py; the wiring, once per gate:
    ("scenario", "gate", "column", "reason"),
    [
        ("wrong dtype", ["toy", "raw", "source_contract"], "x2", "numeric values"),
        ("unknown category", ["toy", "features", "schema"], "color", "value in ['blue', 'green', 'red']"),
    ],
)
def test_bad_data_fails_the_gate_and_changes_nothing_downstream(home, spec_dir, instance, scenario, gate, column, reason):
    clean = toy_rows()
    folder = spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": clean})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, WEEK2).success
    before = warehouse_query(home, "select * from toy.features order by id")

    corrupt(clean, scenario).to_csv(folder / "toy.csv", index=False)  # next week's delivery is bad
    result = run_weeks(defs, "toy", instance, WEEK2)

    assert not result.success
    record = check_record(instance, gate[:2], gate[2])
    assert record.run_id == result.run_id
    assert record.evaluation.passed is False
    metadata = record.evaluation.metadata
    assert column in metadata["failing_columns"].value
    assert reason in metadata["failures"].value
    assert metadata["summary"].value
    assert "sample_failing_rows" in metadata
    # Nothing downstream of the failed gate materialized in that run, and the stored week is untouched.
    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    downstream = {"raw": {"raw", "features"}, "features": {"features"}}[gate[1]]
    assert not (materialized & downstream)
    pd.testing.assert_frame_equal(warehouse_query(home, "select * from toy.features order by id"), before)


def test_dataset_without_timestamp_is_one_snapshot_week(home, spec_dir, instance, shared_dataset, tmp_path):
    folder = spec_dir({}, {})
    copy_file(shared_dataset("german_credit.csv.gz"), folder)  # the bundled copy of the shared file
    (folder / "credit.yaml").write_text(
        """
name: german_credit
task: binary
source: {path: german_credit.csv.gz}
target: creditability
features:
  numeric: [duration_in_month, credit_amount, age_in_years]
  categorical: [purpose, housing]
columns:
  creditability: {categories: [good, bad]}
partitions: {start: 2024-01-01}
"""
    )
    defs = load_definitions()
    job = defs.resolve_job_def("german_credit_pipeline")
    assert job.partitions_def.get_partition_keys() == ["2024-01-01"]
    assert run_weeks(defs, "german_credit", instance, "2024-01-01").success
    assert warehouse_query(home, "select count(*) as n from german_credit.features")["n"].item() == 1000
    # its one week has no earlier week to train on: a fixed 30% of its rows is held out for evaluation
    week = warehouse_query(home, "select train_rows, eval_rows from german_credit.evaluations")
    assert week["train_rows"].item() + week["eval_rows"].item() == 1000 and 250 < week["eval_rows"].item() < 350


def test_parquet_source_with_timezone_aware_times(home, spec_dir, instance):
    frame = toy_rows()
    frame["ts"] = pd.to_datetime(frame["ts"]).dt.tz_localize("UTC").dt.tz_convert("America/New_York")
    spec_dir({"toy.yaml": TOY_SPEC.replace("toy.csv", "toy.parquet")}, {"toy.parquet": frame})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, WEEK2).success
    stored = warehouse_query(home, "select min(ts) as lo, max(ts) as hi, count(*) as n from toy.features")
    assert stored["n"].item() == 40
    assert stored["lo"].item() >= pd.Timestamp("2024-01-08") and stored["hi"].item() < pd.Timestamp("2024-01-15")


def test_naive_local_times_are_read_in_the_spec_timezone_and_cut_into_utc_weeks(home, spec_dir, instance):
    frame = toy_rows(weeks=2, per_week=4)
    frame.loc[0, "ts"] = "2024-01-08 00:30:00"  # Berlin, Monday 00:30 = Sunday 23:30 UTC: the week before
    frame.loc[1, "ts"] = "2024-01-08 01:00:00"  # Berlin, Monday 01:00 = Monday 00:00 UTC: week 2
    spec = TOY_SPEC.replace("  key: [id]", "  key: [id]\n  timezone: Europe/Berlin")
    spec_dir({"toy.yaml": spec}, {"toy.csv": frame})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, "2024-01-01", WEEK2).success
    raw = warehouse_query(home, "select id, ts from toy.raw order by id").set_index("id")["ts"]
    assert raw[0] == pd.Timestamp("2024-01-07 23:30:00") and raw[1] == pd.Timestamp("2024-01-08 00:00:00")
    assert raw[2] == pd.Timestamp(frame.loc[2, "ts"]) - pd.Timedelta(hours=1)  # winter: UTC+1
