"""Hostile and careless inputs: specs and data files that try to escape, inject or silently mislead.

Each test names the attack or mistake it keeps out; most are pure (spec loading, source parsing),
and a Dagster run is used only where the behaviour lives in the wiring.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from mlplatform.lib.warehouse import quote_identifier, replace_week_rows
from mlplatform.specs import SpecError, load_specs
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks, warehouse_query


def injection(marker: Path) -> str:
    return f"true; DROP TABLE IF EXISTS victim.raw; COPY (SELECT 42 AS pwned) TO '{marker}'; SELECT 1 WHERE 'a'"


def problems_for(spec_dir, spec_text: str, data: dict[str, pd.DataFrame] | None = None) -> list[str]:
    folder = spec_dir({"toy.yaml": spec_text}, {"toy.csv": toy_rows()} if data is None else data)
    with pytest.raises(SpecError) as caught:
        load_specs(folder)
    return [str(p) for p in caught.value.problems]


# 1. SQL injection through a column name

def test_sql_in_a_timestamp_column_name_is_refused_at_load_with_the_rule(spec_dir, tmp_path):
    name = injection(tmp_path / "x.csv")
    frame = toy_rows().rename(columns={"ts": name})
    problems = problems_for(spec_dir, TOY_SPEC.replace("timestamp: ts", f'timestamp: "{name}"'), {"toy.csv": frame})
    assert len(problems) == 1, problems
    assert "toy.yaml: source.timestamp: found column name \"true; DROP TABLE" in problems[0]
    assert "allowed: letters A-Z/a-z, digits, '_', ' ', '.' and '-'" in problems[0]


@pytest.mark.parametrize("key", ["target", "features.numeric", "columns"])
def test_sql_in_other_column_names_is_refused(spec_dir, key):
    bad = 'x1"; drop table toy.raw; --'
    text = {
        "target": TOY_SPEC.replace("target: y", f"target: '{bad}'"),
        "features.numeric": TOY_SPEC.replace("numeric: [x1, x2]", f"numeric: ['{bad}', x2]"),
        "columns": TOY_SPEC.replace("x1: {min: 0, max: 10}", f"'{bad}': {{min: 0}}"),
    }[key]
    problems = problems_for(spec_dir, text)
    assert any(f"toy.yaml: {key}" in p and "found column name" in p for p in problems), problems


def test_quoted_identifiers_keep_an_injection_string_a_mere_name(tmp_path):
    marker = tmp_path / "pwned.csv"
    name = injection(marker) + '"; DROP TABLE victim.raw; --'
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        connection.execute("create schema victim; create table victim.raw as select 1 as a")
        frame = pd.DataFrame({name: [pd.Timestamp("2024-01-01")], "v": [1.0]})
        replace_week_rows(connection, "toy", "evaluations", frame, name, [pd.Timestamp("2024-01-01")])
        replace_week_rows(connection, "toy", "evaluations", frame, name, [pd.Timestamp("2024-01-01")])
        assert connection.execute("select count(*) from victim.raw").fetchone() == (1,)
        assert connection.execute(f"select count(*) from toy.evaluations where {quote_identifier(name)} "
                                  "is not null").fetchone() == (1,)
    assert not marker.exists()


def test_a_time_column_with_a_space_runs_end_to_end(home, spec_dir, instance):
    frame = toy_rows(weeks=1).rename(columns={"ts": "event time"})
    spec_dir({"toy.yaml": TOY_SPEC.replace("timestamp: ts", "timestamp: event time").replace("end: 2024-01-22",
                                                                                             "end: 2024-01-08")},
             {"toy.csv": frame})
    defs = load_definitions()
    assert run_weeks(defs, "toy", instance, "2024-01-01", assets=["raw", "features"]).success
    assert run_weeks(defs, "toy", instance, "2024-01-01", assets=["raw", "features"]).success  # replaces the week
    stored = warehouse_query(home, 'select count(*) as n from toy.features where "event time" >= \'2024-01-01\'')
    assert stored["n"].item() == len(frame)


# 2. A spec that reads any file and shows it

SECRET = "root:$6$SECRET-HASH-NEVER-ECHOED:19000:0:99999:7:::"


def secret_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "shadow"
    target.write_text(SECRET + "\ndaemon:*:19000:0:99999:7:::\n")
    return target


def load_in_thread(folder: Path, seconds: float) -> list[str]:
    """Load specs in a daemon thread: a regression that hangs fails the test instead of hanging the suite."""
    import threading

    found: list[str] = []

    def work() -> None:
        try:
            load_specs(folder)
            found.append("(loaded)")
        except SpecError as error:
            found.extend(str(p) for p in error.problems)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"loading the specs took more than {seconds} s"
    return found


def test_a_file_outside_the_spec_folder_is_refused_without_showing_its_content(spec_dir, tmp_path):
    secret = secret_file(tmp_path / "etc")
    relative = "../" * 8 + str(secret).lstrip("/")
    for path in (relative, str(secret)):
        [problem] = problems_for(spec_dir, TOY_SPEC.replace("path: toy.csv", f"path: {path}"))
        assert "toy.yaml: source.path: file" in problem and "is outside the spec's folder and the data roots" in problem
        assert "MLPLATFORM_DATA_ROOTS" in problem
        assert "SECRET" not in problem and "root:" not in problem


def test_a_file_inside_an_allowed_root_is_never_echoed_either(spec_dir, tmp_path, monkeypatch):
    secret = secret_file(tmp_path / "etc")
    monkeypatch.setenv("MLPLATFORM_DATA_ROOTS", str(secret.parent))
    problems = problems_for(spec_dir, TOY_SPEC.replace("path: toy.csv", f"path: {secret}"))
    assert problems and all("SECRET" not in p for p in problems), problems


def test_a_device_is_refused_quickly_even_inside_a_data_root(spec_dir, monkeypatch):
    folder = spec_dir({"toy.yaml": TOY_SPEC.replace("path: toy.csv", "path: /dev/zero")}, {})
    assert load_in_thread(folder, 10) == [f"{folder / 'toy.yaml'}: source.path: file /dev/zero is outside the spec's "
                                          f"folder and the data roots; allowed: files under {folder}. Move the file "
                                          "there or add its folder to MLPLATFORM_DATA_ROOTS (folders separated by ':')"]
    monkeypatch.setenv("MLPLATFORM_DATA_ROOTS", "/dev")
    [problem] = load_in_thread(folder, 10)
    assert "source.path: /dev/zero is not a regular file (a folder, device or pipe); allowed: a CSV or Parquet file" \
        in problem


def test_a_file_without_line_breaks_is_refused_after_a_bounded_read(spec_dir):
    folder = spec_dir({"toy.yaml": TOY_SPEC}, {})
    (folder / "toy.csv").write_bytes(b"a" * (3 << 20))
    [problem] = load_in_thread(folder, 10)
    assert "source.path: toy.csv has no line break in its first 1048576 bytes; expected a CSV header line" in problem
    assert "aaaa" not in problem


def test_a_symlink_inside_the_folder_pointing_outside_is_refused(spec_dir, tmp_path):
    secret = secret_file(tmp_path / "etc")
    folder = spec_dir({"toy.yaml": TOY_SPEC}, {})
    (folder / "toy.csv").symlink_to(secret)
    [problem] = problems_for(spec_dir, TOY_SPEC, {})
    assert f"source.path: file {folder / 'toy.csv'} (it resolves to {secret}) is outside the spec's folder" in problem
    assert "SECRET" not in problem


def test_data_in_a_configured_root_loads(spec_dir, tmp_path, monkeypatch):
    shared = tmp_path / "shared data"
    shared.mkdir()
    toy_rows().to_csv(shared / "toy.csv", index=False)
    monkeypatch.setenv("MLPLATFORM_DATA_ROOTS", f"/nonexistent:{shared}")
    folder = spec_dir({"toy.yaml": TOY_SPEC.replace("path: toy.csv", f"path: {shared / 'toy.csv'}")}, {})
    [spec] = load_specs(folder)
    assert spec.source_path == shared / "toy.csv"


def test_a_semicolon_separated_file_gets_a_hint(spec_dir):
    folder = spec_dir({"toy.yaml": TOY_SPEC}, {})
    toy_rows().to_csv(folder / "toy.csv", index=False, sep=";")
    [problem] = problems_for(spec_dir, TOY_SPEC, {})
    assert "source.path: toy.csv has a single column (the header looks ';'-separated; a CSV source must be " \
           "comma-separated)" in problem


# 3. A spec that imports code

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")
class Model:
    def fit(self, X, y): return self
    def predict(self, X): return X
"""


def test_a_module_beside_a_spec_is_never_imported(spec_dir, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    folder = spec_dir({"toy.yaml": TOY_SPEC + "estimator: {class: evil.Model}\n"}, {"toy.csv": toy_rows()})
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(folder))  # as if Dagster or `python -m` were started from the spec folder
    [problem] = problems_for(spec_dir, TOY_SPEC + "estimator: {class: evil.Model}\n")
    assert "estimator.class: found 'evil.Model'; estimator classes may only come from the modules sklearn.* " \
           "(nothing was imported)" in problem
    assert "MLPLATFORM_ESTIMATOR_MODULES" in problem
    assert not marker.exists()
    # Even a prefix a team allowed is not imported from the spec's folder.
    monkeypatch.setenv("MLPLATFORM_ESTIMATOR_MODULES", "evil")
    [problem] = problems_for(spec_dir, TOY_SPEC + "estimator: {class: evil.Model}\n")
    assert "estimator.class: found 'evil.Model'; module 'evil' would be imported from the spec's folder" in problem
    assert not marker.exists()


def test_a_team_allows_its_own_estimator_package(spec_dir, tmp_path, monkeypatch):
    package = tmp_path / "site" / "team_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from sklearn.linear_model import Ridge as TeamRidge\n")
    monkeypatch.syspath_prepend(str(package.parent))
    text = TOY_SPEC + "estimator: {class: team_models.TeamRidge, params: {alpha: 2.0}}\n"
    assert "estimator classes may only come from" in problems_for(spec_dir, text)[0]
    monkeypatch.setenv("MLPLATFORM_ESTIMATOR_MODULES", "xgboost, team_models")
    [spec] = load_specs(spec_dir({"toy.yaml": text}, {"toy.csv": toy_rows()}))
    assert spec.estimator.class_name == "team_models.TeamRidge"


# 7. A killed run blocks every later run

HANGING_RUN = """
import time
from pathlib import Path
from dagster import DagsterInstance, job, op

@op
def wait():
    Path({started!r}).write_text("started")
    time.sleep(120)

@job
def hangs():
    wait()

hangs.execute_in_process(instance=DagsterInstance.get())
"""


def test_a_run_whose_process_was_killed_is_marked_failed_before_the_next_run(instance, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from dagster import DagsterRunStatus

    from mlplatform.defs.instance import fail_dead_runs

    started = tmp_path / "started"
    script = tmp_path / "hang.py"
    script.write_text(HANGING_RUN.format(started=str(started)))
    worker = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "DAGSTER_HOME": str(instance.root_directory)})
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.2)
        assert started.exists(), "the run never started"
        [run] = instance.get_runs()
        assert run.status == DagsterRunStatus.STARTED
        assert fail_dead_runs(instance, log=lambda _: None) == []  # alive: left alone
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    logged: list[str] = []
    assert fail_dead_runs(instance, log=logged.append) == [run.run_id]
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    assert f"its process {worker.pid} is gone" in logged[0]
    assert fail_dead_runs(instance, log=logged.append) == []  # once


def test_the_instance_config_enables_run_monitoring(home, monkeypatch):
    from dagster import DagsterInstance

    from mlplatform.defs.instance import DAGSTER_YAML, PREVIOUS_DAGSTER_YAML, prepare_dagster_home
    from mlplatform.lib.settings import load_settings

    settings = load_settings()
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))  # prepare_dagster_home sets it: restore after
    settings.dagster_home.mkdir(parents=True)
    for previous in PREVIOUS_DAGSTER_YAML:  # an older platform's config, unchanged: replaced
        (settings.dagster_home / "dagster.yaml").write_text(previous)
        prepare_dagster_home(settings)
        assert (settings.dagster_home / "dagster.yaml").read_text() == DAGSTER_YAML
    configured = DagsterInstance.from_config(str(settings.dagster_home))
    assert configured.run_monitoring_enabled
    assert configured.run_monitoring_settings["max_resume_run_attempts"] == 0


# 6. Clear errors at validate, not halfway through a run

@pytest.mark.parametrize(("extra", "expected"), [
    ("estimator: {class: sklearn.linear_model.Ridge, params: {alpha: lots}}",
     "toy.yaml: estimator.params.alpha: The 'alpha' parameter of Ridge must be"),
    ("estimator: {class: sklearn.ensemble.RandomForestClassifier}",
     "toy.yaml: estimator.class: found 'sklearn.ensemble.RandomForestClassifier', a classifier, for task regression; "
     "use a regressor"),
    ("source: {path: toy.csv, timestamp: ts, key: [id], timezone: Europe/Berln}",
     "toy.yaml: source.timezone: found 'Europe/Berln', which is not an IANA time zone; allowed: names such as UTC, "
     "Europe/Berlin, America/New_York (did you mean 'Europe/Berlin'?)"),
    ("source: {path: toy.csv, timestamp: ts, key: [id], timezone: ../../etc/passwd}",
     "toy.yaml: source.timezone: found '../../etc/passwd', which is not an IANA time zone"),
    ("gates: {metric: roc_auc}", "toy.yaml: gates.metric: found 'roc_auc'; allowed for task regression: rmse, mae, r2"),
])
def test_spec_mistakes_that_used_to_fail_at_run_time_are_named_at_validate(spec_dir, extra, expected):
    text = TOY_SPEC
    if extra.startswith("source:"):
        text = text.replace("source:\n  path: toy.csv\n  timestamp: ts\n  key: [id]\n", extra + "\n")
    else:
        text += extra + "\n"
    problems = problems_for(spec_dir, text)
    assert any(p.endswith(expected) or expected in p for p in problems), problems


def test_a_regressor_for_a_classification_task_is_named(spec_dir):
    text = TOY_SPEC.replace("task: regression", "task: binary") + "estimator: {class: sklearn.linear_model.Ridge}\n"
    problems = problems_for(spec_dir, text)
    assert any("estimator.class: found 'sklearn.linear_model.Ridge', a regressor, for task binary; use a classifier"
               in p for p in problems), problems


# 4. Silent wrong results in data

def rows_with_times(fmt: str | None = None, epoch_unit: str | None = None) -> pd.DataFrame:
    frame = toy_rows()
    ts = pd.to_datetime(frame["ts"])
    if fmt:
        frame["ts"] = ts.dt.strftime(fmt)
    if epoch_unit:
        frame["ts"] = (ts - pd.Timestamp("1970-01-01")) // pd.Timedelta(1, unit=epoch_unit)
    return frame


def source_with(**keys: str) -> str:
    extra = "".join(f"\n  {k}: '{v}'" for k, v in keys.items())
    return TOY_SPEC.replace("  key: [id]\n", "  key: [id]" + extra + "\n")


def test_day_first_or_month_first_dates_are_refused_until_a_format_is_given(spec_dir):
    data = {"toy.csv": rows_with_times("%d/%m/%Y %H:%M")}
    [problem] = problems_for(spec_dir, TOY_SPEC, data)
    assert "toy.yaml: source.timestamp: column 'ts' has dates that read differently day-first and month-first " \
           "('02/01/2024 " in problem
    assert "set source.timestamp_format, e.g. '%d/%m/%Y %H:%M'" in problem
    [spec] = load_specs(spec_dir({"toy.yaml": source_with(timestamp_format="%d/%m/%Y %H:%M")}, data))
    from mlplatform.lib.source import read_source, to_utc_naive

    frame = read_source(spec.source_path)
    parsed = to_utc_naive(frame["ts"], fmt=spec.source.timestamp_format)
    assert parsed.iloc[len(parsed) // 2].month == 1 and parsed.max() < pd.Timestamp("2024-01-22")  # January, not June


def test_epoch_numbers_need_a_unit_and_a_wrong_unit_is_named(spec_dir):
    data = {"toy.csv": rows_with_times(epoch_unit="s")}
    [problem] = problems_for(spec_dir, TOY_SPEC, data)
    assert "source.timestamp: column 'ts' holds numbers ('1704067200', " in problem
    assert "set source.timestamp_unit: s (seconds) or ms (milliseconds)" in problem
    [problem] = problems_for(spec_dir, source_with(timestamp_unit="ms"), data)
    assert "source.timestamp_unit: column 'ts' has values that land outside 1971..2200 ('1704067200', " \
           in problem and "-> 1970-01-20 " in problem
    [spec] = load_specs(spec_dir({"toy.yaml": source_with(timestamp_unit="s")}, data))
    assert spec.source.timestamp_unit == "s"


def test_unparseable_times_are_refused_above_the_allowed_share(spec_dir):
    frame = toy_rows()
    frame.loc[[3, 7], "ts"] = "yesterday-ish"
    [problem] = problems_for(spec_dir, TOY_SPEC, {"toy.csv": frame})
    assert "source.timestamp: 2 of the first 120 values of column 'ts' do not parse as times (e.g. 'yesterday-ish'); " \
           "allowed: a share up to source.max_unparsed_share (0)" in problem
    assert load_specs(spec_dir({"toy.yaml": source_with(max_unparsed_share="0.05")}, {"toy.csv": frame}))


def test_the_raw_gate_counts_unparsed_times_and_null_tokens_and_refuses_other_text(spec_dir):
    from datetime import datetime

    from mlplatform.lib.source import Window, read_source, rows_in_window
    from mlplatform.lib.validation import check_source_week, parse_source_times

    frame = toy_rows()
    frame["x2"] = frame["x2"].astype(object)
    frame.loc[1, "ts"] = "31/31/2024"
    frame.loc[[2, 3, 4], "x2"] = ["NA", "null", ""]
    folder = spec_dir({"toy.yaml": source_with(max_unparsed_share="0.5")}, {"toy.csv": frame})
    [spec] = load_specs(folder)
    window = Window(datetime(2024, 1, 1), datetime(2024, 1, 22))
    columns = ["ts", "id", "x1", "x2", "color", "y"]

    def gate(data: pd.DataFrame):
        times = parse_source_times(data, spec)
        return check_source_week(rows_in_window(data, "ts", window), spec, window, columns, times)

    report = gate(read_source(spec.source_path, spec.source.null_values))
    assert report.passed, report.summary
    assert report.facts["unparsed_timestamps"] == 1 and report.facts["null_cells"] == {"x2": 3}
    frame.loc[5, "x2"] = "None"  # not a null token by default: not a number either
    frame.to_csv(folder / "toy.csv", index=False)
    report = gate(read_source(spec.source_path, spec.source.null_values))
    assert not report.passed
    assert report.problems[0]["column"] == "x2" and report.problems[0]["examples"] == "'None'"
    strict = spec.model_copy(update={"source": spec.source.model_copy(update={"max_unparsed_share": 0.0})})
    times = parse_source_times(read_source(spec.source_path, spec.source.null_values), strict)
    assert times.unparsed == 1 and times.unparsed_examples == ["31/31/2024"]


def test_the_features_gate_refuses_infinite_numbers_naming_column_and_week(spec_dir):
    from datetime import datetime

    from mlplatform.lib.source import Window
    from mlplatform.lib.validation import to_features_frame, validate_features

    [spec] = load_specs(spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()}))
    frame = toy_rows()
    frame["ts"] = pd.to_datetime(frame["ts"])
    frame.loc[50, "x2"] = float("inf")
    frame.loc[51, "x2"] = float("-inf")
    validated, report = validate_features(to_features_frame(frame, spec), spec,
                                          Window(datetime(2024, 1, 1), datetime(2024, 1, 22)))
    assert validated is None
    [problem] = [p for p in report.problems if p["check"] == "finite numbers"]
    assert problem == {"column": "x2", "check": "finite numbers", "failures": 2,
                       "examples": "-inf, inf in weeks 2024-01-08 (2)"}


# 5. Weeks without data

def test_an_empty_week_in_a_range_fails_alone_and_the_weeks_with_rows_proceed(home, spec_dir, instance):
    from mlplatform_tests.helpers import check_record

    frame = toy_rows()
    frame = frame.loc[~pd.to_datetime(frame["ts"]).between("2024-01-08", "2024-01-14 23:59:59")]
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": frame})
    result = run_weeks(load_definitions(), "toy", instance, "2024-01-01", "2024-01-15", assets=["raw", "features"])
    assert result.success
    stored = warehouse_query(home, "select count(*) as n from toy.features")["n"].item()
    assert stored == len(frame) == 80
    notes = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
             and e.event_specific_data.partition == "2024-01-08"]
    assert {(n.asset_key.path[-1], n.passed) for n in notes} == {("raw", False), ("features", False)}
    [raw_note] = [n for n in notes if n.asset_key.path[-1] == "raw"]
    assert raw_note.metadata["summary"].value == ("week 2024-01-08 has no rows in the source (its event times run "
                                                  "from 2024-01-01 00:00 to 2024-01-21 19:48)")
    assert check_record(instance, ["toy", "features"], "schema").evaluation.passed
    [output] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "raw"][:1]
    assert output.materialization.metadata["empty_weeks"].value == ["2024-01-08"]


def test_a_run_of_only_empty_weeks_fails_and_names_the_fix_when_the_data_ended(spec_dir):
    from datetime import datetime

    from mlplatform.lib.source import Window, read_source, rows_in_window
    from mlplatform.lib.validation import check_source_week, parse_source_times

    folder = spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows(weeks=2)})
    [spec] = load_specs(folder)
    frame = read_source(spec.source_path)
    times = parse_source_times(frame, spec)
    window = Window(datetime(2024, 1, 15), datetime(2024, 1, 22))
    report = check_source_week(rows_in_window(frame, "ts", window), spec, window, ["ts", "id"], times)
    assert not report.passed
    assert report.problems[0]["examples"] == (
        "week 2024-01-15 has no rows in the source (its event times run from 2024-01-01 00:00 to 2024-01-14 19:48); "
        "if the data ended, set partitions.end: 2024-01-15 in toy.yaml")


def test_demo_plans_only_the_weeks_with_rows(spec_dir):
    from mlplatform.lib.source import contiguous_ranges, weeks_with_rows

    frame = toy_rows()
    frame = frame.loc[~pd.to_datetime(frame["ts"]).between("2024-01-08", "2024-01-14 23:59:59")]
    [spec] = load_specs(spec_dir({"toy.yaml": TOY_SPEC.replace("end: 2024-01-22", "end: 2024-02-05")},
                                 {"toy.csv": frame}))
    weeks = ["2024-01-01", "2024-01-08", "2024-01-15", "2024-01-22", "2024-01-29"]
    with_rows = weeks_with_rows(spec, weeks)
    assert with_rows == ["2024-01-01", "2024-01-15"]
    assert contiguous_ranges(weeks, with_rows) == [("2024-01-01", "2024-01-01"), ("2024-01-15", "2024-01-15")]


def test_demo_skips_the_weeks_without_rows_and_says_which(home, spec_dir, capsys, monkeypatch):
    from mlplatform.defs.instance import prepare_dagster_home
    from mlplatform.demo.runner import run_models
    from mlplatform.lib.settings import load_settings

    frame = toy_rows()
    frame = frame.loc[~pd.to_datetime(frame["ts"]).between("2024-01-08", "2024-01-14 23:59:59")]
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": frame})
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))  # prepare_dagster_home sets it: restore after
    prepare_dagster_home(load_settings())
    [result] = run_models(models=["toy"])
    assert "--> toy: weeks 2024-01-01 .. 2024-01-15 (skipping 1 weeks without rows in the source: 2024-01-08)" \
        in capsys.readouterr().out
    assert result.skipped_weeks == ["2024-01-08"]
    assert result.success and result.rows["raw"] == 80


# 8. Damaged stores

def stores_with_a_champion(home: Path):
    """A warehouse with data and an audit row, and a real MLflow SQLite registry whose champion is v1."""
    from mlplatform.lib.audit import record_alias_changes
    from mlplatform.lib.tracking import Tracker

    home.mkdir(parents=True, exist_ok=True)
    tracker = Tracker.under(home / "mlflow")
    tracker.client.create_registered_model("toy")
    tracker.client.create_model_version("toy", source=(home / "model").as_uri(), tags={"gates": "passed"})
    tracker.set_alias("toy", "champion", "1")
    with duckdb.connect(str(home / "warehouse.duckdb")) as connection:
        connection.execute("create schema toy; create table toy.features as select range as id, range * 0.5 as x "
                           "from range(200000)")
        record_alias_changes(connection, [{"changed_at": pd.Timestamp("2024-01-08"), "model": "toy",
                                           "alias": "champion", "version": "1", "previous_version": None,
                                           "actor": "ann", "reason": "ok", "week": "2024-01-01"}])
    return tracker


def test_a_champion_the_registry_forgot_is_named(home):
    from mlplatform.lib.stores import check_stores
    from mlplatform.lib.tracking import Tracker

    tracker = stores_with_a_champion(home)
    assert check_stores(home, tracker) == []
    # mlflow.db deleted and recreated empty: a fresh store (MLflow keeps a deleted file open in this process,
    # so the recreated store is made under another folder, as a new process would see it).
    [problem] = check_stores(home, Tracker.under(home.parent / "recreated" / "mlflow"))
    assert problem.startswith("toy: the audit says v1 became champion at 2024-01-08 00:00:00, but the registry at "
                              "sqlite:///")
    assert "has no such version: the MLflow store was replaced or lost; restore it from a backup" in problem


def test_a_warehouse_that_fails_an_integrity_read_is_named(home):
    from mlplatform.lib.stores import check_stores

    tracker = stores_with_a_champion(home)
    path = home / "warehouse.duckdb"
    with path.open("r+b") as handle:  # damage the table's data blocks, not the file header
        for offset in range(12288, path.stat().st_size - 4096, 65536):
            handle.seek(offset + 100)
            handle.write(b"\xff" * 2048)
    [problem] = check_stores(home, tracker)
    assert problem.startswith(f"warehouse {path} fails an integrity read (")
    assert problem.endswith("restore it from a backup (docs/operations.md)")


def test_backup_copies_the_three_stores_into_files_that_open_with_the_same_rows(home, capsys):
    from dagster import DagsterInstance, job, op
    from dagster._core.instance.ref import InstanceRef

    from mlplatform.cli import main
    from mlplatform.lib.tracking import Tracker

    stores_with_a_champion(home)
    (home / "mlflow" / "artifacts" / "toy").mkdir(parents=True)
    (home / "mlflow" / "artifacts" / "toy" / "card.md").write_text("model card")

    @op
    def nothing() -> None:
        pass

    @job
    def tiny():
        nothing()

    (home / "dagster").mkdir()
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home / "dagster"))) as instance:
        assert tiny.execute_in_process(instance=instance).success
        runs = len(instance.get_runs())
    target = home.parent / "backup"
    assert main(["backup", "--to", str(target)]) == 0
    assert f"backup in {target}" in capsys.readouterr().out
    with duckdb.connect(str(target / "warehouse.duckdb"), read_only=True) as copy:
        assert copy.execute("select count(*), sum(x) from toy.features").fetchone() == (200000, 0.5 * 199999 * 100000)
        assert copy.execute("select actor from audit.alias_changes").fetchone() == ("ann",)
    assert Tracker.under(target / "mlflow").alias_version("toy", "champion") == "1"
    assert (target / "mlflow" / "artifacts" / "toy" / "card.md").read_text() == "model card"
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(target / "dagster"))) as restored:
        assert len(restored.get_runs()) == runs == 1
    assert main(["backup", "--to", str(target)]) == 1  # never over an earlier backup
    assert "is not empty; give a new folder" in capsys.readouterr().err


def test_the_spec_error_a_code_location_raises_is_short_and_keeps_every_problem(spec_dir, home, capsys):
    import pickle

    from mlplatform.cli import main

    specs = {f"m{i}.yaml": TOY_SPEC.replace("name: toy", f"name: m{i}").replace("task: regression", "task: nope")
             for i in range(30)}
    folder = spec_dir(specs, {"toy.csv": toy_rows()})
    with pytest.raises(SpecError) as caught:
        load_specs(folder)
    text = str(caught.value)
    assert text.splitlines()[0] == "30 problem(s) in model specs:"
    assert len(text.splitlines()) == 27 and text.endswith("... and 5 more: run `mlplatform validate`")
    assert len(pickle.loads(pickle.dumps(caught.value)).problems) == 30
    assert main(["validate"]) == 1
    assert capsys.readouterr().err.count("task: found 'nope'") == 30


# 9. Damaged stores on every path; a wait that says so; where output goes; names on one line

def truncated_warehouse(path: Path) -> int:
    """A warehouse written over several checkpoints, then cut to half its length, as a copy that stopped halfway
    leaves it: DuckDB still opens it (its catalog is in the first half), a read-write open then grows it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        with duckdb.connect(str(path)) as connection:
            connection.execute(f"create schema if not exists filler; create or replace table filler.t{i} as "
                               f"select range as id, range * 0.5 as x from range({300_000 * (i + 1)})")
    with duckdb.connect(str(path)) as connection:  # an audit trail written last: its blocks are in the cut half
        connection.execute(
            "create schema audit; create table audit.events as select 'toy' as model, range as seq, "
            "timestamp '2024-01-01' + to_seconds(range) as occurred_at, 'data_gate' as event, 'ann' as actor, "
            "null::varchar as version, '2024-01-01' as week, true as passed, 'ok' as summary, "
            "null::varchar as dagster_run_id, null::varchar as mlflow_run_id, null::varchar as data_fingerprint, "
            "null::varchar as code_version, '{}' as details, md5(range::varchar) as prev_hash, "
            "md5((range + 1)::varchar) as hash from range(300000)")
    size = path.stat().st_size // 2 // 4096 * 4096
    with path.open("r+b") as handle:
        handle.truncate(size)
    with duckdb.connect(str(path), read_only=True):
        pass  # opens: only reading its tables (or writing) finds the damage
    return size


def step_failures(result) -> list[str]:
    """What each failed step raised (the innermost error under Dagster's wrapper), as its one-line message."""
    failures = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            failures.append(error.message.strip())
    return failures


def test_a_run_refuses_a_truncated_warehouse_with_the_one_line_message_and_leaves_it_as_it_was(
        home, spec_dir, instance):
    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    path = home / "warehouse.duckdb"
    size = truncated_warehouse(path)
    result = run_weeks(load_definitions(), "toy", instance, "2024-01-01", assets=["raw"])
    assert not result.success
    [failure] = step_failures(result)
    assert failure.startswith(f"mlplatform.lib.warehouse.WarehouseDamaged: warehouse {path} fails an integrity read (")
    assert failure.endswith("restore it from a backup (docs/operations.md)") and "\n" not in failure
    assert path.stat().st_size == size  # never opened read-write
    assert not path.with_name(path.name + ".wal").exists()


def test_audit_verify_backup_and_card_name_a_truncated_warehouse_in_one_line(home, spec_dir, capsys):
    from mlplatform.cli import main

    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    path = home / "warehouse.duckdb"
    size = truncated_warehouse(path)
    assert main(["audit", "toy", "--verify", "--wait", "1"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"toy: warehouse {path} fails an integrity read (")
    assert line.endswith("restore it from a backup (docs/operations.md)")
    assert main(["backup", "--to", str(home.parent / "copy"), "--wait", "1"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"no backup made: warehouse {path} fails an integrity read (")
    assert main(["card", "toy", "--version", "1", "--wait", "1"]) == 1
    damaged, last = capsys.readouterr().err.splitlines()[-2:]  # DuckDB's detail (the offset it failed at) may vary
    assert damaged.startswith(f"warehouse {path} fails an integrity read (") and last == "no card written"
    assert damaged.endswith("restore it from a backup (docs/operations.md)")
    assert path.stat().st_size == size


def test_the_integrity_read_is_remembered_per_file_identity(tmp_path):
    import os

    from mlplatform.lib.warehouse import integrity_problem

    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("create table t as select range as id, range * 0.5 as x from range(200000)")
    assert integrity_problem(path, 1) is None
    stat = path.stat()
    with path.open("r+b") as handle:  # same length, same mtime: the same file as far as the cache can tell
        for offset in range(12288, stat.st_size - 4096, 65536):
            handle.seek(offset + 100)
            handle.write(b"\xff" * 2048)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert integrity_problem(path, 1) is None  # remembered: not read again
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # changed: read again
    assert integrity_problem(path, 1) is not None


def test_a_run_with_a_deleted_mlflow_store_names_it_before_training(home, spec_dir, instance):
    """The audit names champion v1; mlflow.db is gone (a new process recreates it empty)."""
    from mlplatform.lib.audit import record_alias_changes

    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    home.mkdir(parents=True)
    with duckdb.connect(str(home / "warehouse.duckdb")) as connection:
        record_alias_changes(connection, [{"changed_at": pd.Timestamp("2024-01-08"), "model": "toy",
                                           "alias": "champion", "version": "1", "previous_version": None,
                                           "actor": "ann", "reason": "ok", "week": "2024-01-01"}])
    assert not (home / "mlflow" / "mlflow.db").exists()
    result = run_weeks(load_definitions(), "toy", instance, "2024-01-01", "2024-01-15",
                       assets=["raw", "features", "model", "evaluation"])
    assert not result.success
    [failure] = step_failures(result)  # raw and features ran; the model step stopped at once
    assert "toy: the audit says v1 became champion at 2024-01-08 00:00:00, but the registry at sqlite:///" in failure
    assert "has no such version: the MLflow store was replaced or lost; restore it from a backup" in failure
    runs = warehouse_query(home, "select count(*) as n from audit.alias_changes")
    assert runs["n"].tolist() == [1]  # nothing moved
    import sqlite3

    with sqlite3.connect(home / "mlflow" / "mlflow.db") as store:  # nothing trained or logged before the check:
        # only the Dagster run's parent, opened by dagster-mlflow's resource and ended FAILED by its hook
        assert store.execute("select name, status from runs").fetchall() == [("toy_pipeline", "FAILED")]


HOLDING = """
import duckdb, sys
connection = duckdb.connect(sys.argv[1], read_only=True)
print("holding", flush=True)
sys.stdin.readline()
"""


def hold_warehouse(path: Path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", HOLDING, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_connection_waiting_for_the_lock_names_the_holder_until_it_lets_go(tmp_path):
    from mlplatform.lib.warehouse import connect_when_free

    path = tmp_path / "w.duckdb"
    duckdb.connect(str(path)).close()
    holder = hold_warehouse(path)
    heard: list[str] = []

    def on_wait(message: str) -> None:
        heard.append(message)
        if len(heard) == 2:
            holder.stdin.write("go\n")
            holder.stdin.flush()

    try:
        with connect_when_free(path, 120, on_wait=on_wait, report_every=0.2) as connection:
            assert connection.execute("select 1").fetchone() == (1,)
    finally:
        holder.kill()
        holder.wait()
    assert len(heard) >= 2
    assert all(f"waiting for the warehouse {path}: process {holder.pid} holds its lock (" in m for m in heard)
    assert heard[0].endswith("giving up after 120 s)")


@pytest.mark.slow
def test_a_run_waiting_for_the_warehouse_says_so_in_its_log_naming_the_holder(home, spec_dir, instance, monkeypatch):
    import threading
    import time

    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    monkeypatch.setenv("MLPLATFORM_WAREHOUSE_WAIT_SECONDS", "300")
    defs = load_definitions()
    duckdb.connect(str(home / "warehouse.duckdb")).close()
    holder = hold_warehouse(home / "warehouse.duckdb")
    results = []
    run = threading.Thread(target=lambda: results.append(
        run_weeks(defs, "toy", instance, "2024-01-08", assets=["raw"])))
    run.start()
    waiting: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while not waiting and time.monotonic() < deadline and run.is_alive():
            time.sleep(0.5)
            for past in instance.get_runs(limit=1):
                waiting = [e.user_message for e in instance.all_logs(past.run_id)
                           if "waiting for the warehouse" in e.user_message]
    finally:
        holder.stdin.write("go\n")
        holder.stdin.flush()
        holder.wait()
        run.join()
    assert waiting, "the run said nothing while it waited"
    assert f"process {holder.pid} holds its lock" in waiting[0]
    assert results[0].success  # it got the warehouse once the holder let go


# The output of `card --output` and `backup --to`

@pytest.mark.parametrize("case", ["missing folder", "a folder", "a file's child", "proc", "a fifo"])
def test_an_output_path_that_cannot_be_a_file_is_refused_in_one_line_naming_it(tmp_path, case):
    import os

    from mlplatform.lib.outputs import OutputRefused, write_output_text

    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    path, why = {
        "missing folder": (tmp_path / "nope" / "card.md", "does not exist; create it first"),
        "a folder": (tmp_path, "is a folder; give a file name"),
        "a file's child": (tmp_path / "file" / "card.md", "is not a folder"),
        "proc": (Path("/proc/mlplatform-card.md"), "cannot write in /proc"),
        "a fifo": (tmp_path / "fifo", "is not a regular file"),
    }[case]
    with pytest.raises(OutputRefused) as refused:
        write_output_text(path, "card", force=True)
    assert str(path) in str(refused.value) and why in str(refused.value)
    assert "\n" not in str(refused.value)


def test_an_output_file_is_never_overwritten_without_force_and_never_through_a_link(tmp_path):
    from mlplatform.lib.outputs import OutputRefused, write_output_text

    existing = tmp_path / "card.md"
    existing.write_text("kept")
    with pytest.raises(OutputRefused, match="exists; give --force to replace it"):
        write_output_text(existing, "new")
    assert existing.read_text() == "kept"
    assert write_output_text(existing, "new", force=True) == existing
    assert existing.read_text() == "new"
    target = tmp_path / "victim"
    target.write_text("precious")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    for force in (False, True):
        with pytest.raises(OutputRefused, match="is a symbolic link; output never follows one"):
            write_output_text(link, "card", force=force)
    assert target.read_text() == "precious" and link.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("case", ["missing parent", "a file", "a link", "proc", "not empty"])
def test_backup_to_a_path_that_cannot_be_a_new_folder_is_refused_in_one_line(home, tmp_path, capsys, case):
    from mlplatform.cli import main

    home.mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    path, why = {
        "missing parent": (tmp_path / "nope" / "backup", "does not exist; create it first"),
        "a file": (tmp_path / "file", "exists and is not a folder"),
        "a link": (tmp_path / "link", "is a symbolic link; output never follows one"),
        "proc": (Path("/proc/mlplatform-backup"), "/proc/mlplatform-backup"),
        "not empty": (tmp_path / "full", "is not empty; give a new folder"),
    }[case]
    assert main(["backup", "--to", str(path), "--wait", "5"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert str(path) in line and why in line
    assert not (tmp_path / "elsewhere").exists()


def test_backup_promote_and_rollback_name_a_damaged_mlflow_store_in_one_line(home, tmp_path, capsys):
    from mlplatform.cli import main

    (home / "mlflow").mkdir(parents=True)
    (home / "mlflow" / "mlflow.db").write_bytes(b"not a database" * 1000)
    assert main(["backup", "--to", str(tmp_path / "backup"), "--wait", "5"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("no complete backup made: ") and str(home / "mlflow" / "mlflow.db") in line
    assert "restore it from a backup" in line

    # every command that opens the registry says the same, not SQLAlchemy's traceback from MLflow's client
    for command in (["promote", "toy", "--version", "1", "--by", "ann"], ["rollback", "toy", "--by", "ann"]):
        assert main([*command, "--wait", "5"]) == 1
        err = capsys.readouterr().err
        assert f"MLflow store {home / 'mlflow' / 'mlflow.db'} cannot be read" in err and "Traceback" not in err


def test_card_output_refuses_an_existing_file_and_a_link_before_any_work(home, spec_dir, tmp_path, capsys):
    from mlplatform.cli import main

    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    existing = tmp_path / "card.md"
    existing.write_text("kept")
    link = tmp_path / "link.md"
    link.symlink_to(tmp_path / "victim")
    assert main(["card", "toy", "--output", str(existing)]) == 1
    assert capsys.readouterr().err.splitlines() == [f"{existing} exists; give --force to replace it", "no card written"]
    assert main(["card", "toy", "--output", str(link), "--force"]) == 1
    assert "is a symbolic link; output never follows one" in capsys.readouterr().err
    assert existing.read_text() == "kept" and not (tmp_path / "victim").exists()


# A person's name and reason on one line

@pytest.mark.parametrize("text", ["ann\nroot", "ann\r", "ann\x1b[31m", "ann\u202eoor", "ann\u2028x", "a\tb"])
def test_a_name_or_reason_with_a_control_character_is_refused(text):
    from mlplatform.lib.promotion import PromotionRefused, refuse_control_characters

    with pytest.raises(PromotionRefused, match=r"^--by holds a control character \(U\+[0-9A-F]{4} at position \d+\)"):
        refuse_control_characters(by=text, reason="fine")
    with pytest.raises(PromotionRefused, match=r"^--reason holds a control character"):
        refuse_control_characters(by="ann", reason=text)
    refuse_control_characters(by="Ann-Marie O'Neil (ops)", reason="Zoë's review: ok ✓", other=None)


def test_promote_rollback_and_the_ui_jobs_refuse_a_newline_in_by_or_reason_and_change_nothing(
        home, spec_dir, instance, capsys):
    from mlplatform.cli import main
    from mlplatform.lib.tracking import Tracker

    spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    tracker = stores_with_a_champion(home)
    tracker.client.create_model_version("toy", source=(home / "model").as_uri(), tags={"gates": "passed"})
    before = warehouse_query(home, "select count(*) as n from audit.alias_changes")["n"].tolist()
    assert main(["promote", "toy", "--version", "2", "--by", "ann\nactor: root"]) == 1
    assert "--by holds a control character (U+000A at position 4)" in capsys.readouterr().err
    assert main(["rollback", "toy", "--to", "1", "--by", "ann", "--reason", "ok\x1b[2K"]) == 1
    assert "--reason holds a control character (U+001B at position 3)" in capsys.readouterr().err
    approve = load_definitions().resolve_job_def("toy_approve")
    refused = approve.execute_in_process(instance=instance, raise_on_error=False, run_config={"ops": {
        "toy_approve_champion": {"config": {"approved_by": "ann\nactor: root", "reason": "ok", "version": "2"}}}})
    assert not refused.success
    assert "--by holds a control character (U+000A at position 4)" in str(refused.all_events)
    assert Tracker.under(home / "mlflow").alias_version("toy", "champion") == "1"
    assert warehouse_query(home, "select count(*) as n from audit.alias_changes")["n"].tolist() == before


# 10. labels.path and labels.table: the rules of source.path, checked at validate and at load

LABELS = "labels:\n  path: {path}\n"


def labels_spec(path: str) -> str:
    return TOY_SPEC + LABELS.format(path=path)


def test_a_labels_file_outside_the_roots_or_through_a_symlink_is_refused_at_validate(spec_dir, tmp_path):
    secret = secret_file(tmp_path / "etc")
    [problem] = problems_for(spec_dir, labels_spec(str(secret)))
    assert "toy.yaml: labels.path: file " in problem and "is outside the spec's folder and the data roots" in problem
    folder = spec_dir({"toy.yaml": labels_spec("outcomes.csv")}, {"toy.csv": toy_rows()})
    (folder / "outcomes.csv").symlink_to(secret)
    [problem] = problems_for(spec_dir, labels_spec("outcomes.csv"))
    assert f"labels.path: file {folder / 'outcomes.csv'} (it resolves to {secret}) is outside" in problem
    assert "SECRET" not in problem and "root:" not in problem


def test_a_labels_fifo_device_or_empty_file_is_refused_at_validate_quickly(spec_dir, monkeypatch):
    import os

    folder = spec_dir({"toy.yaml": labels_spec("outcomes.csv")}, {"toy.csv": toy_rows()})
    os.mkfifo(folder / "outcomes.csv")  # reading it would block forever
    [problem] = load_in_thread(folder, 10)
    assert "labels.path: " in problem and "outcomes.csv is not a regular file (a folder, device or pipe)" in problem
    monkeypatch.setenv("MLPLATFORM_DATA_ROOTS", "/dev")
    (folder / "toy.yaml").write_text(labels_spec("/dev/zero"))
    [problem] = load_in_thread(folder, 10)
    assert "labels.path: /dev/zero is not a regular file" in problem
    (folder / "outcomes.csv").unlink()
    (folder / "outcomes.csv").write_text("")
    (folder / "toy.yaml").write_text(labels_spec("outcomes.csv"))
    [problem] = load_in_thread(folder, 10)
    assert problem.endswith("labels.path: outcomes.csv is empty; expected a header line with the column names")


def test_a_labels_file_without_the_columns_the_join_needs_is_named_at_validate(spec_dir):
    outcomes = toy_rows()[["ts", "y"]]  # no key column `id`
    [problem] = problems_for(spec_dir, labels_spec("outcomes.csv"), {"toy.csv": toy_rows(), "outcomes.csv": outcomes})
    assert "labels.path: found 'id', which is not a column of labels file outcomes.csv" in problem
    assert "the labels need the event time, the target and the key columns" in problem
    [spec] = load_specs(spec_dir({"toy.yaml": labels_spec("outcomes.csv")},
                                 {"toy.csv": toy_rows(), "outcomes.csv": toy_rows()[["ts", "id", "y"]]}))
    assert spec.labels_path == spec.spec_file.parent / "outcomes.csv"


def test_a_labels_file_emptied_after_validate_gets_a_named_error_at_load(spec_dir):
    from datetime import datetime

    from mlplatform.lib import outcomes
    from mlplatform.lib.source import SourceFileError, Window

    folder = spec_dir({"toy.yaml": labels_spec("outcomes.csv")},
                      {"toy.csv": toy_rows(), "outcomes.csv": toy_rows()[["ts", "id", "y"]]})
    [spec] = load_specs(folder)
    window = Window(datetime(2024, 1, 1), datetime(2024, 1, 8))
    assert len(outcomes.file_outcomes(spec, window)) == 40
    (folder / "outcomes.csv").write_text("")
    with pytest.raises(SourceFileError, match=r"outcomes.csv is empty; expected a header line with the column names"):
        outcomes.file_outcomes(spec, window)


def test_labels_table_may_not_name_another_models_or_the_platforms_schema(spec_dir):
    other = TOY_SPEC.replace("name: toy", "name: other")
    for table, expected in (("other.features", "found 'other.features', a table of model 'other'; a model's labels may "
                                               "not come from another model's schema"),
                            ("audit.events", "found 'audit.events', in the platform's own schema 'audit'"),
                            ("pg_catalog.pg_class", "in the database's own schema 'pg_catalog'")):
        folder = spec_dir({"toy.yaml": TOY_SPEC + f"labels:\n  table: {table}\n", "other.yaml": other},
                          {"toy.csv": toy_rows()})
        with pytest.raises(SpecError) as caught:
            load_specs(folder)
        assert [p.key for p in caught.value.problems] == ["labels.table"], caught.value.problems
        assert expected in caught.value.problems[0].message
    for table in ("toy.outcomes", "main.outcomes", "team_labels.outcomes"):  # its own schema, or one no model owns
        folder = spec_dir({"toy.yaml": TOY_SPEC + f"labels:\n  table: {table}\n", "other.yaml": other},
                          {"toy.csv": toy_rows()})
        assert len(load_specs(folder)) == 2


def test_at_load_a_schema_holding_a_models_tables_counts_as_that_models(tmp_path):
    """A model whose spec is not in this folder still owns its schema: the run reads the warehouse to know."""
    from mlplatform.lib.warehouse import model_schemas
    from mlplatform.specs.reserved import labels_table_problem

    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        connection.execute("create schema gone; create table gone.features (a int); create schema team_labels; "
                           "create table team_labels.outcomes (a int)")
        schemas = model_schemas(connection)
    assert schemas == {"gone"}
    assert "a table of model 'gone'" in labels_table_problem("gone.features", "toy", schemas)
    assert labels_table_problem("team_labels.outcomes", "toy", schemas) is None


def test_a_labels_table_is_read_for_its_window_and_another_models_schema_is_refused_at_read(spec_dir, tmp_path):
    """What the weekly join and the hourly canary analysis both read (lib/outcomes.table_outcomes): the window's
    outcomes keyed like the log; a schema that turns out to be another model's is refused when read, not only at
    load; a table not built yet is an error for the week and no outcomes for the hourly analysis."""
    from datetime import datetime

    from mlplatform.lib.outcomes import JOIN_KEY, LABEL, table_outcomes
    from mlplatform.lib.source import Window

    folder = spec_dir({"toy.yaml": TOY_SPEC + "labels:\n  table: team_labels.outcomes\n"}, {"toy.csv": toy_rows()})
    [spec] = load_specs(folder)
    window = Window(datetime(2024, 1, 8), datetime(2024, 1, 15))
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        assert table_outcomes(spec, connection, window, missing_ok=True).empty
        with pytest.raises(duckdb.CatalogException):
            table_outcomes(spec, connection, window)
        connection.execute("create schema team_labels; create table team_labels.outcomes as select * from "
                           "(values (1, timestamp '2024-01-07 23:00', 2.5), (2, timestamp '2024-01-09 10:00', 3.5)) "
                           "t(id, ts, y)")
        found = table_outcomes(spec, connection, window)
        assert list(found[JOIN_KEY]) == ["k:2"] and list(found[LABEL]) == [3.5]  # the week's row only
        connection.execute("create table team_labels.features (a int)")  # now it is a model's schema
        with pytest.raises(ValueError, match="labels.table: found 'team_labels.outcomes', a table of model"):
            table_outcomes(spec, connection, window)


# 11. Model names that are SQL keywords or someone else's schema

SYSTEM = "a schema or catalog name the database keeps for itself"


@pytest.mark.parametrize(("name", "why"), [
    ("select", "a SQL keyword"), ("join", "a SQL keyword"), ("information_schema", SYSTEM), ("pg_catalog", SYSTEM),
    ("pg_anything", SYSTEM), ("main", SYSTEM), ("warehouse", SYSTEM), ("audit", "the platform's own schema (the audit "
                                                                         "trail)"),
])
def test_a_reserved_model_name_is_refused_at_validate(spec_dir, name, why):
    [problem] = problems_for(spec_dir, TOY_SPEC.replace("name: toy", f"name: {name}"))
    assert f"toy.yaml: name: found {name!r}, {why}; a model's name becomes its warehouse schema" in problem
    assert "one of audit, information_schema, main, memory, pg_catalog, system, temp, warehouse" in problem
    assert problem.endswith(f"choose another, e.g. {name}_model")


def test_the_static_keyword_list_is_duckdbs_own():
    """Every keyword the installed DuckDB refuses as an unquoted schema name (its reserved ones and some of its
    type_function ones); `temp` and `system` fail too, as catalogs: they are system schemas."""
    from mlplatform.lib.settings import Settings
    from mlplatform.specs.reserved import SQL_KEYWORDS, SYSTEM_SCHEMAS, WAREHOUSE_CATALOG

    connection = duckdb.connect()
    keywords = connection.execute("select keyword_name, keyword_category from duckdb_keywords()").fetchall()
    failing = set()
    for keyword, _ in keywords:  # what the IO manager's statements would do with it unquoted
        try:
            connection.execute(f"create schema if not exists {keyword}; create table if not exists {keyword}.raw "
                               f"as select 1 as a; select * from {keyword}.raw where a >= 0")
        except duckdb.Error:
            failing.add(keyword)
    assert {k for k, category in keywords if category == "reserved"} <= SQL_KEYWORDS
    assert SQL_KEYWORDS == failing - SYSTEM_SCHEMAS
    assert Settings(home=Path("/h"), specs_dir=Path("/s")).warehouse_path.stem == WAREHOUSE_CATALOG


def test_the_io_manager_quotes_schema_and_table(tmp_path):
    """dagster-duckdb pastes the asset key into its SQL: a schema named like a keyword must still round-trip."""
    import dagster as dg

    from mlplatform.defs.resources import WarehouseIOManager

    @dg.asset(key_prefix=["select"], name="from")
    def stored() -> pd.DataFrame:
        return pd.DataFrame({"a": [1, 2, 3]})

    @dg.asset(key_prefix=["order"], name="table", ins={"rows": dg.AssetIn(key=dg.AssetKey(["select", "from"]))})
    def read(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.assign(b=rows["a"] * 2)

    database = tmp_path / "w.duckdb"
    assert dg.materialize([stored, read], resources={"io_manager": WarehouseIOManager(database=str(database))}).success
    assert dg.materialize([stored], resources={"io_manager": WarehouseIOManager(database=str(database))}).success
    with duckdb.connect(str(database), read_only=True) as connection:
        assert connection.execute('select sum(b) from "order"."table"').fetchall() == [(12,)]
        assert connection.execute('select count(*) from "select"."from"').fetchall() == [(3,)]


# 12. Code beside a spec

SHADOW = """
from pathlib import Path
Path({marker!r}).write_text("ran")
"""


def test_a_module_beside_the_specs_named_like_a_real_one_is_refused_at_validate(spec_dir, tmp_path):
    marker = tmp_path / "marker"
    folder = spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    for name in ("duckdb.py", "json.py", "sklearn.py"):
        (folder / name).write_text(SHADOW.format(marker=str(marker)))
    (folder / "team_notes.py").write_text(SHADOW.format(marker=str(marker)))  # shadows nothing: allowed
    with pytest.raises(SpecError) as caught:
        load_specs(folder)
    found = {Path(p.file).name: p.message for p in caught.value.problems}
    assert set(found) == {"duckdb.py", "json.py", "sklearn.py"}, found
    assert found["duckdb.py"] == (f"a module named 'duckdb' beside the specs would be imported instead of the real "
                                  f"duckdb by a process started in {folder}; code beside a spec is never run: move "
                                  "or rename duckdb.py")
    assert not marker.exists()


def test_the_spec_folder_is_taken_off_the_import_path_before_anything_is_imported(spec_dir, tmp_path):
    """As `dagster asset materialize` or `python -m` started in the spec folder: the folder is first on sys.path."""
    import subprocess
    import sys

    marker = tmp_path / "marker"
    folder = spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()})
    (folder / "duckdb.py").write_text(SHADOW.format(marker=str(marker)))
    code = ("import sys; sys.path.insert(0, ''); import mlplatform; import duckdb; "
            "print(duckdb.__file__); print('' in sys.path)")
    env = {**__import__("os").environ, "MLPLATFORM_SPECS": str(folder)}
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    where, still_on_path = done.stdout.split()
    assert not marker.exists() and not Path(where).is_relative_to(folder) and still_on_path == "False"


def test_a_module_already_imported_from_the_spec_folder_is_refused(tmp_path, monkeypatch):
    import sys
    import types

    from mlplatform.import_path import spec_folder_off_import_path

    folder = tmp_path / "specs"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    assert spec_folder_off_import_path({"MLPLATFORM_SPECS": str(folder)}) == [str(folder)]
    assert str(folder) not in sys.path
    planted = types.ModuleType("planted")
    planted.__file__ = str(folder / "planted.py")
    monkeypatch.setitem(sys.modules, "planted", planted)
    with pytest.raises(ImportError, match=r"module 'planted' was imported from the spec folder .*code beside a spec "
                                          r"is never run"):
        spec_folder_off_import_path({"MLPLATFORM_SPECS": str(folder)})


# 13. Size limits: the number of features, and what the drift step shows of them

def test_more_features_than_the_limit_are_refused_at_validate_and_the_limit_can_be_raised(spec_dir, monkeypatch):
    from mlplatform.specs.schema import MAX_FEATURES

    names = [f"f{i}" for i in range(MAX_FEATURES + 1)]
    rows = pd.DataFrame({"ts": ["2024-01-01 00:00:00"], "y": [1.0], **{name: [0.0] for name in names}})
    text = f"""
name: wide
task: regression
source: {{path: toy.csv, timestamp: ts}}
target: y
features: {{numeric: [{", ".join(names)}]}}
partitions: {{start: 2024-01-01}}
"""
    [problem] = problems_for(spec_dir, text, {"toy.csv": rows})
    assert problem.endswith(f"toy.yaml: features: found {MAX_FEATURES + 1} features; at most {MAX_FEATURES} are "
                            "allowed (the drift, training and explanation steps grow with each feature: see "
                            "docs/configuration.md). Select fewer features, or raise the limit with "
                            "MLPLATFORM_MAX_FEATURES on a machine measured for it"), problem
    monkeypatch.setenv("MLPLATFORM_MAX_FEATURES", str(MAX_FEATURES + 1))
    [spec] = load_specs(spec_dir({"toy.yaml": text}, {"toy.csv": rows}))
    assert len(spec.feature_columns) == MAX_FEATURES + 1
    monkeypatch.setenv("MLPLATFORM_MAX_FEATURES", "lots")
    [problem] = problems_for(spec_dir, text, {"toy.csv": rows})
    assert "MLPLATFORM_MAX_FEATURES='lots': expected a whole number of features, at least 1" in problem


def test_the_drift_rows_shown_are_bounded_and_keep_the_drifted_ones_and_the_order():
    from mlplatform.lib.drift import FEATURE, LABEL, PREDICTION, ColumnDrift, DriftReport, shown_columns, shown_note

    def row(name: str, drifted: bool, effect: float, role: str = FEATURE) -> ColumnDrift:
        return ColumnDrift(name, "K-S", 0.01 if drifted else 0.5, 0.05, drifted, role=role, effect=effect)

    columns = [row(f"f{i}", i % 37 == 0, (i % 37 == 0) * (0.2 + i / 10_000)) for i in range(2000)]
    columns += [row("prediction", False, 0.0, PREDICTION), row("y", True, 0.5, LABEL)]
    report = DriftReport(columns, 100, 100, 0.3)
    shown = shown_columns(report, 50, seed=0)
    drifted = [c for c in columns if c.role == FEATURE and c.drifted]  # 55: more than fit
    assert len(shown) == 50 and shown == shown_columns(report, 50, seed=0)  # bounded, reproducible
    assert {"prediction", "y"} <= {c.column for c in shown}
    assert {c.column for c in shown if c.role == FEATURE} == {c.column for c in sorted(drifted, key=lambda c: -c.effect)[:48]}
    assert [columns.index(c) for c in shown] == sorted(columns.index(c) for c in shown)
    assert shown_note(report, shown).startswith("50 of 2002 rows shown")

    calm = DriftReport([row(f"f{i}", False, 0.0) for i in range(300)], 100, 100, 0.3)
    sample = shown_columns(calm, 20, seed=1)
    assert len(sample) == 20 and len({c.column for c in sample}) == 20
    assert sample != shown_columns(calm, 20, seed=2)  # a sample, not the first 20
    small = DriftReport(columns[:10], 100, 100, 0.3)
    assert shown_columns(small, 50) == columns[:10] and shown_note(small, columns[:10]) == ""


def test_a_sqlite_store_held_by_a_writer_is_busy_not_damaged(tmp_path):
    """A run's MLflow writer holding the file's lock must not make the check call a healthy store damaged."""
    import sqlite3

    from mlplatform.lib.stores import _sqlite_problem

    path = tmp_path / "mlflow.db"
    with sqlite3.connect(path) as setup:
        setup.execute("create table t (x)")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("begin exclusive")
    try:
        assert _sqlite_problem(path, "MLflow store", timeout=0.1) is None
    finally:
        writer.execute("rollback")
        writer.close()
    path.write_bytes(b"not a database" * 100)
    assert "cannot be read" in _sqlite_problem(path, "MLflow store", timeout=0.1)
