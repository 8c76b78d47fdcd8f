"""The Pandera schema of every table the platform writes, and the one way a table is validated when written.

Tables whose columns come from the spec (raw, staged, features, the evaluation's predictions, the prediction
log's inputs) get schemas built from the spec; the others are fixed here. Every write of a table calls
:func:`validate_table` first: a row that breaks the schema refuses the whole write with a one-line error naming
the table, the column, the check and the offending rows, and nothing is written. :func:`describe_columns` gives
what the Dagster UI shows as the asset's column schema (``dagster/column_schema``). No Dagster import here.

The types are checked by kind (a timestamp of any resolution, any integer width, text in object or string
dtype), not by one exact dtype: DuckDB, Parquet and pandas hand the same column back in different widths.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from mlplatform import names
from mlplatform.specs import ModelSpec

MAX_EXAMPLES = 5
NOTHING_WRITTEN = "Nothing was written"


class TableRefused(ValueError):
    """Rows that break their table's schema: the write (or the read that would use them) is refused."""

    def __init__(self, table: str, problems: list[dict[str, Any]], consequence: str = NOTHING_WRITTEN):
        self.table = table
        self.problems = problems
        shown = "; ".join(
            f"column {p['column']!r} fails {p['check']} on {p['failures']} row(s) (rows {p['rows'] or '-'}: "
            f"{p['examples']})" for p in problems[:MAX_EXAMPLES])
        more = f"; and {len(problems) - MAX_EXAMPLES} more" if len(problems) > MAX_EXAMPLES else ""
        super().__init__(f"{table}: refused by its schema: {shown}{more}. {consequence} (schemas: "
                         "mlplatform/lib/table_schemas.py, docs/tables.md)")

    @property
    def columns(self) -> list[str]:
        return sorted({p["column"] for p in self.problems})


def schema_problems(errors: SchemaErrors) -> list[dict[str, Any]]:
    """Pandera's failure cases as one problem per (column, check): failures, offending row labels, examples."""
    cases = errors.failure_cases.astype({"column": object, "failure_case": object})
    missing = cases["check"] == "column_in_dataframe"  # pandera names the schema there; the column is the case
    if missing.any():
        cases.loc[missing, "column"] = cases.loc[missing, "failure_case"]
        cases.loc[missing, "failure_case"] = "column missing"
    problems = []
    for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
        rows = pd.Series(group["index"]).dropna().astype(str).unique()[:MAX_EXAMPLES].tolist()
        problems.append({
            "column": "(table)" if pd.isna(column) else str(column),
            "check": str(check),
            "failures": int(len(group)),
            "rows": ", ".join(rows),
            "examples": ", ".join(group["failure_case"].astype(str).unique()[:MAX_EXAMPLES].tolist()),
        })
    mistyped = {p["column"] for p in problems if p["check"].startswith("type ")}
    return [p for p in problems if p["column"] not in mistyped or p["check"].startswith("type ")]  # not the echoes


def validate_table(frame: pd.DataFrame, schema: pa.DataFrameSchema, table: str,
                   consequence: str = NOTHING_WRITTEN) -> pd.DataFrame:
    """``frame`` if every row meets ``schema`` (checked lazily: all failures at once), else :class:`TableRefused`
    naming ``table``, each failing column and check, the offending rows, and ``consequence``.

    In place (the schemas coerce nothing): validating costs the checks, not a copy of the table.
    """
    try:
        return schema.validate(frame, lazy=True, inplace=True)
    except SchemaErrors as errors:
        raise TableRefused(table, schema_problems(errors), consequence) from None


def describe_columns(schema: pa.DataFrameSchema) -> list[dict[str, Any]]:
    """Column facts (name, type, description, nullable, unique, constraints) for the UI's column schema."""
    unique = schema.unique if isinstance(schema.unique, list) else [schema.unique] if schema.unique else []
    described = []
    for name, column in schema.columns.items():
        kind = (column.metadata or {}).get("type") or (str(column.dtype) if column.dtype is not None else "any")
        constraints = [check.error for check in column.checks if check.error and not check.name.startswith("type ")]
        if not column.required:
            constraints.append("optional column")
        described.append({
            "name": name,
            "type": kind,
            "description": column.description or "",
            "nullable": column.nullable,
            "unique": column.unique or (unique == [name]),
            "constraints": constraints,
        })
    return described


# --- columns by kind ---------------------------------------------------------------------------------------------

def _kind_check(kind: str, test: Callable[[pd.Series], bool], fits: Callable[[Any], bool]) -> pa.Check:
    """A check of the kind: one test of the dtype when it is right (no cost per row); else value by value (an
    object column of numbers is numbers), so the error names the rows that do not fit."""
    def check(s: pd.Series) -> bool | pd.Series:
        if test(s):
            return True
        return s.map(lambda v: v is None or (isinstance(v, float) and v != v) or v is pd.NaT or fits(v)).astype(bool)

    return pa.Check(check, element_wise=False, name=f"type {kind}", error=f"type {kind}")


def _is_timestamp(s: pd.Series) -> bool:
    return pd.api.types.is_datetime64_dtype(s) and getattr(s.dtype, "tz", None) is None


def _is_number(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _is_integer(s: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _is_flag(s: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(s):
        return True
    return pd.api.types.is_object_dtype(s) and pd.api.types.infer_dtype(s, skipna=True) in ("boolean", "empty")


def _is_text(s: pd.Series) -> bool:
    if not (pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)):
        return False
    return pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty")


KIND_TESTS: dict[str, tuple[Callable[[pd.Series], bool], Callable[[Any], bool]]] = {
    "timestamp": (_is_timestamp, lambda v: isinstance(v, datetime) and v.tzinfo is None),
    "number": (_is_number, lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))),
    "integer": (_is_integer, lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))),
    "boolean": (_is_flag, lambda v: isinstance(v, (bool, np.bool_))),
    "text": (_is_text, lambda v: isinstance(v, str)),
}
"""Per kind: the test of a column's dtype, and of one value (used only to name the rows when the dtype is wrong)."""


def _shared(check: pa.Check) -> pa.Check:
    """The check, copied by reference when Pandera deep-copies its column: every ``DataFrameSchema`` deep-copies each
    column it is given, and copying the checks was most of that (about 0.3 s of a 50-spec code location's load).
    A check is never changed after it is built, so one object can serve every copy."""
    check.__deepcopy__ = lambda memo: check  # type: ignore[method-assign]  # what copy.deepcopy looks up first
    return check


def column(kind: str | None, description: str, nullable: bool = False, required: bool = True,
           checks: list[pa.Check] | None = None) -> pa.Column:
    """A column of a kind (``timestamp``, ``number``, ``integer``, ``boolean``, ``text``; None: any type)."""
    all_checks = [_shared(check) for check in
                  ([_kind_check(kind, *KIND_TESTS[kind])] if kind else []) + list(checks or [])]
    return pa.Column(None, checks=all_checks, nullable=nullable, required=required, description=description,
                     metadata={"type": kind or "any"})


def one_of(values: list[str] | tuple[str, ...]) -> pa.Check:
    allowed = sorted(values)
    return pa.Check(lambda s: s.isin(allowed) | s.isna(), element_wise=False, name="isin", error=f"value in {allowed}")


def between(low: float | None, high: float | None) -> pa.Check:
    """Within [low, high] (NaN passes: nullability is the column's own rule)."""
    def test(s: pd.Series) -> pd.Series:
        inside = pd.Series(True, index=s.index)
        if low is not None:
            inside &= s >= low
        if high is not None:
            inside &= s <= high
        return inside | s.isna()

    text = " and ".join(([f">= {low:g}"] if low is not None else []) + ([f"<= {high:g}"] if high is not None else []))
    return pa.Check(test, element_wise=False, name="range", error=f"value {text}")


def _week(description: str = "Monday 00:00 UTC of the week the row belongs to.") -> pa.Column:
    return column("timestamp", description)


def _schema(columns: dict[str, pa.Column], name: str, description: str, unique: list[str] | None = None
            ) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(columns, strict=False, unique=unique or None, name=name, description=description)


# --- datasets ----------------------------------------------------------------------------------------------------

def _dataset_columns(spec: ModelSpec, where: str) -> dict[str, pa.Column]:
    """The spec's columns as a dataset holds them before the features gate: typed when present, nulls allowed.

    Not required: a dbt-staged spec derives some columns, and the features gate names a missing one.
    """
    columns: dict[str, pa.Column] = {spec.time_column: column("timestamp", f"Event time (UTC) {where}.")}
    for key in spec.source.key:
        if key != spec.time_column:
            columns[key] = column(None, "Row key.", nullable=True, required=False)
    numeric = set(spec.numeric_columns)
    for name in spec.modelling_columns:
        if name in columns:
            continue
        role = "Target" if name == spec.target else "Feature" if name in spec.feature_columns else "Sensitive attribute"
        columns[name] = column("number" if name in numeric else None, role, nullable=True, required=False)
    return columns


def raw_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """``<model>.raw``: the source's rows of the week, the spec's numeric columns as numbers (other columns kept)."""
    return _schema(_dataset_columns(spec, "as parsed from the source"), f"{spec.name}_raw",
                   f"Source rows of {spec.name} by event week; columns the spec does not name are kept as found.")


def staged_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """``<model>.staged``: the dbt model's output, with the columns the features step reads from it."""
    return _schema(_dataset_columns(spec, "after dbt staging"), f"{spec.name}_staged",
                   f"Output of the dbt model {spec.staging.dbt_model if spec.staging else '-'} for {spec.name}.")


# --- the model step's tables ---------------------------------------------------------------------------------------

def predictions_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """``<model>.predictions``: week W's evaluation rows scored by week W's version."""
    columns: dict[str, pa.Column] = {
        "week": _week(),
        spec.time_column: column("timestamp", "Event time of the evaluated row (UTC)."),
    }
    for key in spec.source.key:
        if key != spec.time_column:
            columns[key] = column(None, "Row key.")
    columns |= {
        "actual": column("number", "The target, encoded as the metrics read it (class index for classifiers)."),
        "prediction": column("number", "The version's score (regression value, or probability / class index)."),
        "predicted_label": column("text", "The predicted value or class, as text."),
        "model_version": column("text", "Registered MLflow version that scored the row."),
    }
    return _schema(columns, f"{spec.name}_predictions", f"Per-row predictions of each week's version of {spec.name}.")


def evaluations_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """``<model>.evaluations`` (the ``evaluation`` asset): one row per week's version, metric and gate verdicts."""
    from mlplatform.lib import gates as gate_lib

    optional_gates = {gate_lib.FAIRNESS, gate_lib.TRAINING_DATA}
    gates = [*gate_lib.GATES, gate_lib.FAIRNESS, gate_lib.TRAINING_DATA]
    columns = {
        "week": _week("Week W the version was evaluated on."),
        "model_version": column("text", "Registered MLflow version."),
        "mlflow_run_id": column("text", "MLflow run of the version."),
        "train_start": column("timestamp", "First day of the training window (UTC)."),
        "train_rows": column("integer", "Rows trained on.", checks=[between(1, None)]),
        "eval_rows": column("integer", "Rows of week W evaluated on.", checks=[between(1, None)]),
        "data_fingerprint": column("text", "Hash of the training rows."),
        "metric": column("text", "The spec's primary metric.", checks=[one_of([spec.primary_metric])]),
        "value": column("number", "Primary metric on week W.", nullable=True),
        "ci_low": column("number", "95% bootstrap interval, low end.", nullable=True),
        "ci_high": column("number", "95% bootstrap interval, high end.", nullable=True),
        "metrics_json": column("text", "Every metric with its interval, as JSON."),
        **{f"gate_{gate}": column("boolean", f"Gate {gate} passed.", required=gate not in optional_gates)
           for gate in gates},
        "gate_reasons_json": column("text", "Each gate's reason, as JSON."),
        "champion_compared": column("text", "The champion the beat_champion gate compared with.", nullable=True),
        "aliases_set": column("text", "Aliases the version received (comma-separated; empty: none)."),
        "evaluated_at": column("timestamp", "When the row was written (UTC)."),
    }
    return _schema(columns, f"{spec.name}_evaluations", f"Out-of-time evaluation of each weekly version of {spec.name}.",
                   unique=["week"])


def backtest_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """The ``backtest`` asset's table: the primary metric of every evaluated week, as read from evaluations."""
    return _schema({
        "week": _week("Evaluated week."),
        "model_version": column("text", "Version evaluated that week."),
        "value": column("number", f"{spec.primary_metric} on the week.", nullable=True),
        "ci_low": column("number", "95% interval, low end.", nullable=True),
        "ci_high": column("number", "95% interval, high end.", nullable=True),
        "threshold_ok": column("boolean", "absolute_threshold gate passed."),
        "champion_ok": column("boolean", "beat_champion gate passed."),
        "sanity_ok": column("boolean", "prediction_sanity gate passed."),
        "aliases_set": column("text", "Aliases the version received.", nullable=True),
    }, f"{spec.name}_backtest", f"Walk-forward backtest of {spec.name}: one row per evaluated week.", unique=["week"])


# --- drift and production ------------------------------------------------------------------------------------------

DRIFT_ROLES = ("feature", "prediction", "label")
"""``mlplatform.lib.drift``'s roles, spelled here so the UI's schema does not import the drift statistics (1 s);
a test holds them equal."""


def drift_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """``<model>.drift``: one row per compared column (features, the champion's predictions, labels) per week."""
    share = between(0, 1)
    return _schema({
        "week": _week(),
        "column": column("text", "The feature (or prediction / label) compared."),
        "role": column("text", "What the column is.", checks=[one_of(DRIFT_ROLES)]),
        "method": column("text", "The test that decided."),
        "score": column("number", "evidently: the test's p-value or distance; calibrated: the adjusted p-value.",
                        nullable=True),
        "threshold": column("number", "The score's threshold (evidently) or alpha (calibrated)."),
        "drifted": column("boolean", "The column drifted."),
        "counts": column("boolean", "Its verdict counts toward the week's drifted share."),
        "statistic": column("number", "calibrated: K-S D or chi-square.", nullable=True),
        "p_value": column("number", "calibrated: unadjusted p-value.", nullable=True, checks=[share]),
        "p_adjusted": column("number", "calibrated: Benjamini-Hochberg adjusted p-value.", nullable=True, checks=[share]),
        "effect": column("number", "calibrated: K-S D or total variation distance.", nullable=True, checks=[share]),
        "drifted_share": column("number", "Share of counted features that drifted that week.", checks=[share]),
        "check_passed": column("boolean", "The week's drifted_share check passed."),
        "decided_by": column("text", "drift.method of the spec.", checks=[one_of(["calibrated", "evidently"])]),
    }, f"{spec.name}_drift", f"Weekly drift of {spec.name}'s inputs, predictions and labels.",
        unique=["week", "column", "role"])


def labels_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """``<model>.labels``: outcomes known for week W's rows."""
    from mlplatform.lib.live import JOIN_KEY, LABEL

    return _schema({
        "week": _week(),
        JOIN_KEY: column("text", "What the outcome is matched on: k:<entity key> or r:<record id>.", nullable=True),
        LABEL: column("text", f"The outcome ({spec.target}) as text."),
        "time": column("timestamp", "Event time of the labelled row (UTC)."),
    }, f"{spec.name}_labels", f"Outcomes of {spec.name}'s rows, by week.")


def live_performance_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """``<model>.live_performance``: week W's logged predictions joined with their outcomes, per version and role."""
    from mlplatform.lib.live import PREVIOUS_CHAMPION_ROLE
    from mlplatform.lib.routing import LOGGED_ROLES

    return _schema({
        "week": _week(),
        "version": column("text", "Model version."),
        "role": column("text", "Its role that week (batch: scored by `<model>/scores`).",
                       checks=[one_of([*LOGGED_ROLES, PREVIOUS_CHAMPION_ROLE])]),
        "rows": column("integer", "Labelled predictions it made.", checks=[between(0, None)]),
        "metric": column("text", "The spec's primary metric.", checks=[one_of([spec.primary_metric])]),
        "value": column("number", "Live metric (NaN: undefined on these rows).", nullable=True),
        "ci_low": column("number", "95% bootstrap interval, low end.", nullable=True),
        "ci_high": column("number", "95% bootstrap interval, high end.", nullable=True),
        "evaluation_value": column("number", "The version's metric at its own evaluation.", nullable=True),
        "judged": column("boolean", "This row is the champion the live_degradation check judged."),
        "passed": column("boolean", "The check's verdict on the judged row (null elsewhere).", nullable=True),
        "reference_value": column("number", "What the judged row was held to: its evaluation, or the pre-change level "
                                  "of a confirmed concept change (null elsewhere; docs/production.md).", nullable=True,
                                  required=False),
    }, f"{spec.name}_live_performance", f"Live performance of {spec.name}'s versions, by week and role.",
        unique=["week", "version", "role"])


def recovery_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """``<model>.recovery``: the judged weeks that started, continued or ended a recovery from a concept change."""
    from mlplatform.lib.recovery import EVENTS

    return _schema({
        "week": _week("The judged week (Monday 00:00 UTC)."),
        "event": column("text", "recovery_started, recovery_retrain or recovery_ended.", checks=[one_of(EVENTS)]),
        "change_week": column("timestamp", "The first week whose outcomes broke: the new regime starts there."),
        "metric": column("text", "The spec's primary metric.", checks=[one_of([spec.primary_metric])]),
        "level": column("number", "The pre-change level: the live metric of the last healthy champion."),
        "limit": column("number", "The level moved by rollout.rollback.max_degradation of itself."),
        "version": column("text", "The champion judged that week."),
        "live": column("number", "Its live metric that week."),
        "retrain_week": column("timestamp", "The model week a retrain was requested for.", nullable=True),
        "note": column("text", "Where the level came from, or how the week stands against it."),
    }, f"{spec.name}_recovery", f"Recoveries of {spec.name} from concept changes, by judged week.", unique=["week"])


def shadow_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """``<model>.shadow`` (the ``shadow_report`` asset): the shadow version against the champion, same requests."""
    return _schema({
        "week": _week(),
        "champion_version": column("text", "Version that answered."),
        "shadow_version": column("text", "Version scored in its shadow."),
        "pairs": column("integer", "Requests both scored.", checks=[between(1, None)]),
        "agreement": column("number", "Share of pairs that agree.", checks=[between(0, 1)]),
        "mean_abs_difference": column("number", "Mean absolute score difference.", nullable=True,
                                      checks=[between(0, None)]),
        "labelled_pairs": column("integer", "Pairs whose outcome is known.", checks=[between(0, None)]),
        "metric": column("text", "Primary metric (null: no outcomes yet).", nullable=True),
        "shadow_value": column("number", "Shadow's metric on the labelled pairs.", nullable=True),
        "champion_value": column("number", "Champion's metric on the same pairs.", nullable=True),
        "difference": column("number", "shadow - champion.", nullable=True),
        "ci_low": column("number", "95% paired bootstrap interval, low end.", nullable=True),
        "ci_high": column("number", "95% paired bootstrap interval, high end.", nullable=True),
    }, f"{spec.name}_shadow", f"Shadow comparisons of {spec.name}, by week.",
        unique=["week", "champion_version", "shadow_version"])


def live_fairness_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """``<model>.live_fairness``: the spec's fairness measures on week W's live predictions, per version and role."""
    return _schema({
        "week": _week(),
        "version": column("text", "Version that made the predictions."),
        "role": column("text", "champion, canary, shadow or batch."),
        "attribute": column("text", "Sensitive column (`<column> (banded)` when fairness.bands cuts it)."),
        "measure": column("text", "Fairness measure (docs/fairness.md, live fairness)."),
        "value": column("number", "Its value (null: fewer than two groups large enough).", nullable=True),
        "max_allowed": column("number", "The spec's limit (null: reported, not enforced).", nullable=True),
        "judged": column("boolean", "At least two groups had fairness.min_group_rows predictions."),
        "passed": column("boolean", "Within the limit (null: not judged or no limit).", nullable=True),
        "labelled": column("boolean", "Needs outcomes (computed on the labelled predictions)."),
        "rows": column("integer", "Predictions with a value for the attribute.", checks=[between(0, None)]),
        "groups": column("text", "Predictions per group."),
        "without_value": column("integer", "Predictions that carried no value for it.", checks=[between(0, None)]),
    }, f"{spec.name}_live_fairness", f"Fairness of {spec.name}'s live predictions, by week.",
        unique=["week", "version", "role", "attribute", "measure"])


def prediction_log_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """The prediction log as :func:`mlplatform.lib.prediction_log.read_prediction_log` returns it: fixed columns,
    then one column per input feature (optional: a version of another spec may have logged other inputs)."""
    from mlplatform.lib.prediction_log import COLUMNS, INPUT_PREFIX
    from mlplatform.lib.routing import LOGGED_ROLES

    columns = {
        "request_id": column("text", "Request id (the X-Request-ID answered)."),
        "record_index": column("integer", "Position of the record in the request.", checks=[between(0, None)]),
        "record_id": column("text", "The client's `_id` of the record.", nullable=True),
        "time": column("timestamp", "When it was answered (UTC)."),
        "model": column("text", "Model name.", checks=[one_of([spec.name])]),
        "version": column("text", "Version that scored the record."),
        "role": column("text", "champion, canary or shadow (served), or batch (`<model>/scores`).",
                       checks=[one_of(list(LOGGED_ROLES))]),
        "entity_key": column("text", "The record's source.key values, as the labels are matched.", nullable=True),
        "label": column("text", "Predicted value or class, as text.", nullable=True),
        "score": column("number", "Predicted value, or probability of the positive class.", nullable=True),
        "probabilities": column("text", "Class probabilities as JSON.", nullable=True),
        "latency_ms": column("number", "Time to answer (ms).", nullable=True, checks=[between(0, None)]),
        "status": column("integer", "HTTP status the record's scoring ended in (200; error rows only with "
                         "`errors=True`).", required=False),
    }
    numeric = set(spec.features.numeric)
    for feature in spec.feature_columns:
        name = INPUT_PREFIX + feature if feature in COLUMNS else feature
        columns[name] = column("number" if feature in numeric else "text", f"Input feature `{feature}` as sent.",
                               nullable=True, required=False)
    return _schema(columns, f"{spec.name}_prediction_log", f"What the service answered for {spec.name}.")


def scores_schema(spec: ModelSpec) -> pa.DataFrameSchema:
    """``<model>.scores`` (``scoring.batch``): week W's feature rows scored by the champion, in a batch."""
    from mlplatform.lib.routing import BATCH_ROLE

    columns: dict[str, pa.Column] = {
        "week": _week(),
        spec.time_column: column("timestamp", "Event time of the scored row (UTC)."),
    }
    for key in spec.source.key:
        if key != spec.time_column:
            columns[key] = column(None, "Row key (what outcomes are matched on).")
    columns |= {
        "prediction": column("number", "The score: the value (regression), the probability of the positive class "
                             "(binary) or the class index (multiclass), as the service logs it."),
        "predicted_label": column("text", "The predicted value or class, as text."),
        "probabilities": column("text", "Class probabilities as JSON (classifiers; null for regression).",
                                nullable=True),
        "model_version": column("text", "The champion version that scored the row."),
        "role": column("text", "Always `batch`.", checks=[one_of([BATCH_ROLE])]),
        "scored_at": column("timestamp", "When the batch ran (UTC)."),
    }
    return _schema(columns, f"{spec.name}_scores", f"Batch predictions of {spec.name}'s champion, by week.")


def audit_events_schema(spec: ModelSpec | None = None) -> pa.DataFrameSchema:
    """``audit.events``: the hash-chained trail (one schema for every model; ``spec`` only names it)."""
    hex64 = pa.Check.str_matches(r"^[0-9a-f]{64}$", error="64 hex digits")
    return _schema({
        "model": column("text", "Model name."),
        "seq": column("integer", "Position in the model's chain (from 1).", checks=[between(1, None)]),
        "occurred_at": column("timestamp", "When (UTC)."),
        "event": column("text", "Event type (append_events refuses an unknown one by name)."),
        "actor": column("text", "Who or what decided."),
        "version": column("text", "Model version concerned.", nullable=True),
        "week": column("text", "Week concerned.", nullable=True),
        "passed": column("boolean", "Outcome, where the event has one.", nullable=True),
        "summary": column("text", "What happened, in a sentence."),
        "dagster_run_id": column("text", "Dagster run.", nullable=True),
        "mlflow_run_id": column("text", "MLflow run.", nullable=True),
        "data_fingerprint": column("text", "Training data hash.", nullable=True),
        "code_version": column("text", "Platform code version.", nullable=True),
        "details": column("text", "Facts as JSON."),
        "prev_hash": column("text", "Hash of the previous event.", checks=[hex64]),
        "hash": column("text", "SHA-256 of this event and prev_hash; HMAC-SHA256 when the chain is keyed.",
                       checks=[hex64]),
        "hash_scheme": column("text", "What hashed the row: `sha256`, `hmac-sha256:<key id>`, null before keying "
                              "existed.", nullable=True, required=False),
    }, f"{spec.name if spec else 'audit'}_audit_events", "The audit trail: every lifecycle event, hash-chained.",
        unique=["model", "seq"])


SCHEMAS_BY_ASSET: dict[str, Callable[[ModelSpec], pa.DataFrameSchema]] = {
    names.RAW: raw_schema,
    names.STAGED: staged_schema,
    names.EVALUATION: evaluations_schema,
    names.BACKTEST: backtest_schema,
    names.DRIFT: drift_schema,
    names.LABELS: labels_schema,
    names.LIVE_PERFORMANCE: live_performance_schema,
    names.SHADOW_REPORT: shadow_schema,
    names.PREDICTION_LOG: prediction_log_schema,
    names.SCORES: scores_schema,
    names.AUDIT_TRAIL: audit_events_schema,
}
"""The table each asset stage shows in the UI. ``features`` has the data gate's schema
(:func:`mlplatform.lib.validation.features_schema`, which imports this module); ``model`` is not a table (an
MLflow model); the evaluation asset also writes ``<model>.predictions`` (:func:`predictions_schema`)."""

NOT_TABLES = frozenset({names.MODEL})
"""Asset stages that are not tables: the model is an MLflow model (its evaluation and backtest are the tables)."""
