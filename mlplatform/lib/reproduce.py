"""Reproduce a registered version: retrain it from what was recorded with it and compare.

What a version records at training (:mod:`mlplatform.lib.lifecycle`, :mod:`mlplatform.lib.tracking`):
the training window and week, the fingerprints of its training and evaluation rows, the estimator
params and seed, the library and Python versions, the code version (package version, git commit),
the spec's hash and the normalized spec itself (``spec.json``). Reproducing:

1. rebuilds the window's features rows from the data as it is now (the source file through the same
   steps as the raw and features assets, when the spec has no dbt staging; the warehouse's features rows,
   checked against the source, when it has) and recomputes the fingerprint: different rows mean the
   version cannot be reproduced, and :class:`ReproductionRefused` names the window and both fingerprints;
2. retrains in memory (a scratch place: no MLflow run, no registry version, no alias, no warehouse write;
   the warehouse is opened read-only) with the recorded spec;
3. compares the metrics, the gate verdicts it can recompute, and the library and code versions.
"""

from __future__ import annotations

import json
import platform
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from mlplatform import names
from mlplatform.lib.lifecycle import (
    TrainedWeek,
    logged_metrics,
    rows_needed,
    train_week,
    training_and_evaluation_rows,
    training_window,
)
from mlplatform.lib.settings import git_commit
from mlplatform.lib.source import Window, checked_data_path, read_source, rows_in_window
from mlplatform.lib.spec_hash import SPEC_ARTIFACT, SPEC_HASH_TAG, spec_hash
from mlplatform.lib.tracking import Tracker, library_versions
from mlplatform.lib.training import CODE_FACTORY_TAG, CODE_FINGERPRINT_TAG, SEED, fingerprint
from mlplatform.lib.validation import (
    coerce_numeric_columns,
    parse_source_times,
    to_features_frame,
    validate_features,
)
from mlplatform.lib.warehouse import quote_identifier, table_name
from mlplatform.specs import ModelSpec


class ReproductionRefused(RuntimeError):
    """The version cannot be reproduced (its rows changed, or it recorded too little); nothing was trained."""


@dataclass
class Recorded:
    """What a registered version recorded about how it was made."""

    model: str
    version: str
    run_id: str
    week: str
    train_window: Window
    fingerprint: str
    eval_fingerprint: str | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    gates: dict[str, str]  # gate name -> passed / failed (the version's tags)
    spec: dict[str, Any] | None  # the normalized spec (spec.json); None for versions trained before it was recorded

    @property
    def libraries(self) -> dict[str, str]:
        return {k.removeprefix("library."): v for k, v in self.tags.items() if k.startswith("library.")}


@dataclass
class Difference:
    """One thing that differs between the version as recorded and as reproduced (or the environment now)."""

    what: str
    recorded: str
    now: str


@dataclass
class Reproduction:
    recorded: Recorded
    fingerprint: str
    eval_fingerprint: str
    data_source: str  # where the rows came from, as a sentence
    metrics: dict[str, float]
    metric_differences: list[Difference] = field(default_factory=list)
    gate_differences: list[Difference] = field(default_factory=list)
    environment_differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Same metrics and the same verdicts of the gates that were recomputed."""
        return not self.metric_differences and not self.gate_differences

    def lines(self) -> list[str]:
        """The report a person reads."""
        r = self.recorded
        window = f"{r.train_window.start:%Y-%m-%d}..{r.train_window.end:%Y-%m-%d}"
        out = [f"{r.model} v{r.version} (week {r.week}, MLflow run {r.run_id}) reproduced in a scratch place: "
               "no version registered, no alias moved, nothing written to the stores",
               f"  data: training window {window} (end excluded); {self.data_source}",
               f"  fingerprint of the training rows: {self.fingerprint} (recorded: identical)"]
        if r.eval_fingerprint:
            out.append(f"  fingerprint of the evaluation rows: {self.eval_fingerprint} (recorded: identical)")
        if self.identical:
            out.append(f"  metrics: identical ({len(self.metrics)} values: "
                       + ", ".join(f"{k}={v:.6g}" for k, v in sorted(self.metrics.items()) if "_ci_" not in k) + ")")
        for title, found in (("metrics that differ", self.metric_differences),
                             ("gate verdicts that differ", self.gate_differences),
                             ("environment now vs recorded", self.environment_differences)):
            if found:
                out.append(f"  {title}:")
                out += [f"    {d.what}: recorded {d.recorded}, now {d.now}" for d in found]
        out += [f"  note: {note}" for note in self.notes]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.recorded.model, "version": self.recorded.version, "week": self.recorded.week,
                "identical": self.identical, "fingerprint": self.fingerprint, "eval_fingerprint": self.eval_fingerprint,
                "data_source": self.data_source, "metrics": self.metrics,
                **{key: [d.__dict__ for d in found] for key, found in (
                    ("metric_differences", self.metric_differences), ("gate_differences", self.gate_differences),
                    ("environment_differences", self.environment_differences))},
                "notes": self.notes}


def recorded_version(tracker: Tracker, model: str, version: str) -> Recorded:
    """Read what ``model`` v``version`` recorded (registry version, its MLflow run, ``spec.json``); reads only."""
    from mlflow.exceptions import MlflowException

    try:
        registered = tracker.client.get_model_version(model, str(version))
    except MlflowException:
        raise ReproductionRefused(f"{model} v{version}: no such registered model version") from None
    run = tracker.run(registered.run_id)
    tags = dict(run.data.tags)
    params = dict(run.data.params)
    window = tags.get("data.train_window")
    if not window or "data.fingerprint" not in tags:
        raise ReproductionRefused(f"{model} v{version} recorded no training window or data fingerprint: it was not "
                                  "trained by the platform's weekly step and cannot be reproduced")
    start, end = (datetime.fromisoformat(part) for part in window.split(".."))
    spec = None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = tracker.client.download_artifacts(registered.run_id, SPEC_ARTIFACT, scratch)
            spec = json.loads(Path(path).read_text())
        except (MlflowException, OSError):
            spec = None
    version_tags = dict(registered.tags)
    return Recorded(
        model=model, version=str(version), run_id=registered.run_id,
        week=version_tags.get("week") or params.get("eval_week") or tags.get("mlplatform.week", ""),
        train_window=Window(start, end), fingerprint=tags["data.fingerprint"],
        eval_fingerprint=tags.get("data.eval_fingerprint"), params=params, metrics=dict(run.data.metrics), tags=tags,
        gates={k.removeprefix("gate."): v for k, v in version_tags.items() if k.startswith("gate.")}, spec=spec,
    )


def reproduction_spec(recorded: Recorded, current: ModelSpec) -> tuple[ModelSpec, list[str]]:
    """The spec the version was trained under (its ``spec.json``), placed where the current spec file is (for
    relative data paths); the training-data gate is off (it decides whether to train, not what is trained).

    A version without ``spec.json`` is retrained under the current spec, and the notes say so.
    """
    notes = []
    if recorded.spec is not None:
        spec = ModelSpec.model_validate({**recorded.spec, "spec_file": current.spec_file})
        if spec_hash(current) != recorded.tags.get(SPEC_HASH_TAG):
            notes.append("the spec changed since this version was trained: it is retrained under the spec it "
                         f"recorded (hash {recorded.tags.get(SPEC_HASH_TAG, '?')[:12]}), not the current one "
                         f"({spec_hash(current)[:12]})")
    else:
        spec = current
        notes.append("this version recorded no spec (trained before spec.json was recorded): retrained under the "
                     "current spec")
    gates = spec.gates.model_copy(update={"training_data": spec.gates.training_data.model_copy(
        update={"enabled": False})})
    return spec.model_copy(update={"gates": gates}), notes


def source_features(spec: ModelSpec, window: Window, warehouse: Path | None) -> pd.DataFrame:
    """The features rows of ``window`` as the raw and features assets would store them now, from the source file.

    The same steps as those assets (parse event times, coerce numbers, modelling columns, the Pandera schema),
    then a round trip through an in-memory DuckDB table shaped like the warehouse's features table, so
    the dtypes (and so the fingerprint) are the ones training reads. Raises :class:`ReproductionRefused` when
    the rows no longer pass the features gate.
    """
    frame = read_source(checked_data_path(spec.source_path, spec.spec_file.parent), spec.source.null_values)
    if spec.source.timestamp:
        parse_source_times(frame, spec)
    else:
        frame[spec.time_column] = pd.Timestamp(spec.partitions.start)
    rows = coerce_numeric_columns(rows_in_window(frame, spec.time_column, window), spec)
    validated, report = validate_features(to_features_frame(rows, spec), spec, window)
    if validated is None:
        raise ReproductionRefused(f"{spec.name}: the source rows of {window.start:%Y-%m-%d}..{window.end:%Y-%m-%d} "
                                  f"changed and no longer pass the features gate ({report.summary}); the version "
                                  "cannot be reproduced")
    return _as_stored(validated, spec, window, warehouse)


def _as_stored(frame: pd.DataFrame, spec: ModelSpec, window: Window, warehouse: Path | None) -> pd.DataFrame:
    """``frame`` written to and read back from a scratch DuckDB table with the warehouse table's column types."""
    features = table_name(spec.name, names.FEATURES)
    column = quote_identifier(spec.time_column)
    from mlplatform.lib.warehouse import postgres_url

    if warehouse is not None and postgres_url() is not None:
        stored = _as_stored_postgres(frame, spec, window, warehouse)
        if stored is not None:
            return stored
        warehouse = None  # no features table yet: shaped by DuckDB alone
    with duckdb.connect(":memory:") as scratch:
        scratch.register("incoming", frame)
        shaped = False
        if warehouse is not None and warehouse.exists():
            scratch.execute(f"attach {_sql_text(str(warehouse))} as live (read_only)")
            exists = scratch.execute("select count(*) from duckdb_tables() where database_name = 'live' and "
                                     "schema_name = ? and table_name = ?", [spec.name, names.FEATURES]).fetchall()[0][0]
            if exists:
                scratch.execute(f"create table rows as select * from live.{features} limit 0")
                scratch.execute("insert into rows by name select * from incoming")
                shaped = True
            scratch.execute("detach live")
        if not shaped:
            scratch.execute("create table rows as select * from incoming")
        return scratch.execute(f"select * from rows where {column} >= ? and {column} < ? order by {column}",
                               [window.start, window.end]).fetchdf()


def _as_stored_postgres(frame: pd.DataFrame, spec: ModelSpec, window: Window, warehouse: Path) -> pd.DataFrame | None:
    """:func:`_as_stored` on PostgreSQL: through a temporary table shaped like the features table (dropped by the
    rollback); None when the warehouse has no features table for the model."""
    from mlplatform.lib.warehouse import connect_when_free

    column = quote_identifier(spec.time_column)
    with connect_when_free(warehouse, 120.0) as connection:
        exists = connection.execute("select count(*) from information_schema.tables where table_schema = ? and "
                                    "table_name = ?", [spec.name, names.FEATURES]).fetchall()[0][0]
        if not exists:
            return None
        connection.begin()
        try:
            connection.execute(f"create temporary table reproduced (like {table_name(spec.name, names.FEATURES)})")
            connection.insert_frame("reproduced", frame)  # type: ignore[attr-defined]
            return connection.execute(f"select * from reproduced where {column} >= ? and {column} < ? "
                                      f"order by {column}", [window.start, window.end]).fetchdf()
        finally:
            connection.rollback()


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def warehouse_rows(warehouse: Path, schema: str, table: str, time_column: str, window: Window) -> pd.DataFrame:
    """A window of a warehouse table, read through a read-only connection released at once."""
    from mlplatform.lib.warehouse import connect_when_free

    column = quote_identifier(time_column)
    with connect_when_free(warehouse, 120.0, read_only=True) as connection:
        return connection.execute(f"select * from {table_name(schema, table)} where {column} >= ? and {column} < ? "
                                  f"order by {column}", [window.start, window.end]).fetchdf()


def current_rows(spec: ModelSpec, window: Window, warehouse: Path) -> tuple[pd.DataFrame, str]:
    """The features rows of ``window`` as the data stands now, and a sentence saying where they came from.

    Without dbt staging they are rebuilt from the source file. With staging the features are dbt's output,
    which only a run makes: they are read from the warehouse, and the source rows are first checked against
    the warehouse's raw rows, so a source row changed since the raw week was stored is still caught.
    """
    if spec.staging is None:
        return source_features(spec, window, warehouse), f"rows rebuilt from the source file {spec.source_path}"
    from mlplatform.lib.warehouse import warehouse_exists

    if not warehouse_exists(warehouse):
        raise ReproductionRefused(f"{spec.name}: no warehouse at {warehouse}; the staged features cannot be read")
    raw_now = _raw_from_source(spec, window)
    raw_stored = warehouse_rows(warehouse, spec.name, names.RAW, spec.time_column, window)
    columns = [c for c in raw_now.columns if c in raw_stored.columns]
    if _frame_digest(raw_now[columns], spec) != _frame_digest(raw_stored[columns], spec):
        raise ReproductionRefused(
            f"{spec.name}: the source rows of {window.start:%Y-%m-%d}..{window.end:%Y-%m-%d} (the training window, the "
            f"evaluated week and the days before it) differ from the raw rows the warehouse stored from them and dbt "
            f"staged for training ({len(raw_now)} source rows, {len(raw_stored)} stored; digest of the source "
            f"{_frame_digest(raw_now[columns], spec)[:16]}, stored {_frame_digest(raw_stored[columns], spec)[:16]}): "
            "the source changed, so the version cannot be reproduced")
    features = warehouse_rows(warehouse, spec.name, names.FEATURES, spec.time_column, window)
    return features, (f"features rows from the warehouse (dbt staging: {spec.staging.dbt_model}); their source "
                      f"rows checked against {spec.source_path}")


def _raw_from_source(spec: ModelSpec, window: Window) -> pd.DataFrame:
    frame = read_source(checked_data_path(spec.source_path, spec.spec_file.parent), spec.source.null_values)
    if spec.source.timestamp:
        parse_source_times(frame, spec)
    else:
        frame[spec.time_column] = pd.Timestamp(spec.partitions.start)
    return coerce_numeric_columns(rows_in_window(frame, spec.time_column, window), spec)


def _frame_digest(frame: pd.DataFrame, spec: ModelSpec) -> str:
    """Order- and dtype-insensitive digest of rows (values as text), for comparing source and stored raw rows."""
    import hashlib

    text = frame.astype(object).where(frame.notna(), None).astype(str).sort_values(
        list(frame.columns), kind="mergesort").to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()


def reproduce(tracker: Tracker, current: ModelSpec, version: str, warehouse: Path) -> Reproduction:
    """Retrain ``version`` of ``current``'s model in a scratch place and compare; see the module docstring.

    Raises :class:`ReproductionRefused` (nothing trained) when the recorded window's rows changed.
    """
    recorded = recorded_version(tracker, current.name, version)
    spec, notes = reproduction_spec(recorded, current)
    week_start = datetime.fromisoformat(recorded.week)
    features, data_source = current_rows(spec, rows_needed(spec, week_start), warehouse)
    # a version trained after a concept change trained on the new regime only: its window starts later
    since = recorded.train_window.start if recorded.train_window.start > training_window(spec, week_start).start else None
    train, evaluation, window = training_and_evaluation_rows(spec, features, week_start, since)
    window_text = f"{window.start:%Y-%m-%d}..{window.end:%Y-%m-%d}"
    if window != recorded.train_window:
        raise ReproductionRefused(f"{spec.name} v{version}: the recorded training window {recorded.train_window.start:%Y-%m-%d}"
                                  f"..{recorded.train_window.end:%Y-%m-%d} is not the window the recorded spec gives "
                                  f"for week {recorded.week} ({window_text}); cannot reproduce")
    now = fingerprint(train, spec)
    if now != recorded.fingerprint:
        raise ReproductionRefused(
            f"{spec.name} v{version}: the training rows of window {window_text} (end excluded) changed since the "
            f"version was trained: fingerprint recorded {recorded.fingerprint}, now {now} ({len(train)} rows now, "
            f"{recorded.params.get('train_rows', '?')} then; {data_source}). Nothing was retrained")
    eval_now = fingerprint(evaluation, spec)
    if recorded.eval_fingerprint and eval_now != recorded.eval_fingerprint:
        raise ReproductionRefused(
            f"{spec.name} v{version}: the evaluation rows of week {recorded.week} changed since the version was "
            f"trained: fingerprint recorded {recorded.eval_fingerprint}, now {eval_now} ({len(evaluation)} rows now, "
            f"{recorded.params.get('eval_rows', '?')} then). Nothing was retrained")
    if not recorded.eval_fingerprint:
        notes.append("this version recorded no fingerprint of its evaluation rows: only the training rows were checked")
    trained = train_week(spec, features, week_start, since=since)
    if not isinstance(trained, TrainedWeek):  # the rows are the same, so this means the code changed
        raise ReproductionRefused(f"{spec.name} v{version}: retraining week {recorded.week} did not produce a model "
                                  f"now ({getattr(trained, 'gate', trained)})")
    metrics = logged_metrics(trained.metrics)
    result = Reproduction(recorded, now, eval_now, data_source, metrics, notes=notes)
    result.metric_differences = compare_metrics(recorded.metrics, metrics)
    result.gate_differences = compare_gates(recorded.gates, trained)
    result.environment_differences = environment_differences(recorded)
    code = code_difference(recorded.tags, trained.code)
    if code is not None:
        result.environment_differences.append(code)
    elif trained.code:
        result.notes.append(f"team code {trained.code[CODE_FACTORY_TAG]}: fingerprint "
                            f"{trained.code[CODE_FINGERPRINT_TAG][:12]}, identical to the recorded one")
    result.notes.append("gates recomputed: " + ", ".join(sorted(_recomputed_gates(trained)))
                        + " (beat_champion needs the champion of its time and training_data_drift the production "
                        "inputs of its time: not recomputed)")
    return result


def compare_metrics(recorded: dict[str, float], reproduced: dict[str, float]) -> list[Difference]:
    """Every metric whose value is not exactly the recorded one (MLflow stores doubles: equal means equal)."""
    differences = []
    for name in sorted(set(recorded) | set(reproduced)):
        then, now = recorded.get(name), reproduced.get(name)
        if then is None or now is None or float(then) != float(now):
            delta = f" (difference {now - then:+.6g})" if then is not None and now is not None else ""
            differences.append(Difference(name, "-" if then is None else f"{then:.10g}",
                                          ("-" if now is None else f"{now:.10g}") + delta))
    return differences


def _recomputed_gates(trained: TrainedWeek) -> dict[str, bool]:
    outcomes = [trained.threshold_gate, trained.sanity_gate, trained.fairness_gate]
    return {g.name: g.passed for g in outcomes if g is not None}


def compare_gates(recorded: dict[str, str], trained: TrainedWeek) -> list[Difference]:
    """The recomputable gates (threshold, sanity, fairness) whose verdict differs from the recorded one."""
    differences = []
    for name, passed in _recomputed_gates(trained).items():
        now = "passed" if passed else "failed"
        if name in recorded and recorded[name] != now:
            differences.append(Difference(f"gate {name}", recorded[name], now))
    return differences


def code_difference(recorded_tags: dict[str, str], now: dict[str, str]) -> Difference | None:
    """The team's own code (``estimator.factory``): its module's fingerprint recorded vs now, when they differ."""
    then = recorded_tags.get(CODE_FINGERPRINT_TAG)
    current = now.get(CODE_FINGERPRINT_TAG)
    if then is None and current is None or then == current:
        return None
    factory = now.get(CODE_FACTORY_TAG) or recorded_tags.get(CODE_FACTORY_TAG, "?")
    return Difference(f"team code {factory} (fingerprint of its module)", (then or "(not recorded)")[:12],
                      (current or "(none)")[:12])


def environment_differences(recorded: Recorded) -> list[Difference]:
    """Library, Python, seed and code versions that differ between the recorded run and this process."""
    from mlplatform.version import __version__

    found = []
    current = library_versions()
    for name in sorted(set(recorded.libraries) | set(current)):
        then, now = recorded.libraries.get(name, "(not recorded)"), current.get(name, "(not installed)")
        if then != now:
            found.append(Difference(f"library {name}", then, now))
    for what, then, now in (
        ("python", recorded.tags.get("python.version"), platform.python_version()),
        ("mlplatform", recorded.tags.get("mlplatform.version"), __version__),
        ("git commit", recorded.tags.get("git.commit"), git_commit()),
        ("seed", recorded.params.get("seed"), str(SEED)),
    ):
        if then is not None and then != now:
            found.append(Difference(what, then, now or "(unknown)"))
    return found
