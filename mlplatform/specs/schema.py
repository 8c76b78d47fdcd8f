"""The model spec schema: the YAML contract a team writes, as pydantic models.

A bad spec must stop the code location from loading with one line per problem
naming the file, the key, what was found and what is allowed, so a user fixes
every mistake in one pass instead of one per reload.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from mlplatform.specs.files import SNAPSHOT_TIME_COLUMN
from mlplatform.specs.reserved import labels_table_problem, reserved_name_problem
from mlplatform.specs.tasks import DEFAULT_ESTIMATOR, DEFAULT_METRIC, METRICS_BY_TASK

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"

TEAM_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
"""A team's name: also a team folder's name, the Dagster owner ``team:<name>`` and the tag value ``team``."""

OWNER_PATTERN = r"^(team:[A-Za-z0-9_.-]+|[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})$"
"""What Dagster takes as an owner: an email address or ``team:<name>``."""

DEFAULT_NULL_VALUES = ("", "NA", "N/A", "n/a", "null", "NULL", "NaN", "nan")
"""Cell texts read as missing by default (pandas' longer default list, e.g. 'None', '#N/A', is not used)."""

COLUMN_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_ .-]*$"
"""Column names a spec may use: they reach SQL (quoted everywhere too; this is the first line of defence)."""

COLUMN_NAME_RULE = ("letters A-Z/a-z, digits, '_', ' ', '.' and '-', starting with a letter or '_', not ending in a "
                    "space, at most 128 characters")


def check_column_name(name: str) -> str:
    """Refuse a column name that could carry SQL or shell text; the rule is stated in the error."""
    if not isinstance(name, str) or len(name) > 128 or name.endswith(" ") or not re.match(COLUMN_NAME_PATTERN, name):
        raise ValueError(f"found column name {str(name)[:80]!r}; allowed: {COLUMN_NAME_RULE}")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SourceSpec(_Strict):
    """Where the rows come from."""

    path: str = Field(description="CSV (optionally .gz) or Parquet file; relative paths are relative to the spec file.")
    timestamp: str | None = Field(
        default=None,
        description="Event-time column; weekly partitions are cut on it. Without it the whole file is one "
        "snapshot week: the week of `partitions.start`.",
    )
    timezone: str = Field(
        default="UTC",
        description="Time zone of naive timestamps in the source. Everything is stored and cut in UTC.",
    )
    key: list[str] = Field(default_factory=list, description="Columns that identify a row; duplicates fail the gate.")
    timestamp_format: str | None = Field(
        default=None,
        description="strftime format of the event time (e.g. `%d/%m/%Y %H:%M`). Without it each value is parsed by "
        "guessing, and a column whose values read differently day-first and month-first is refused.",
    )
    timestamp_unit: Literal["s", "ms"] | None = Field(
        default=None, description="The event time is an epoch number in seconds (`s`) or milliseconds (`ms`)."
    )
    max_unparsed_share: float = Field(
        default=0, ge=0, le=1, description="The raw gate fails when more than this share of the source's rows has an "
        "event time that does not parse (those rows belong to no week).",
    )
    null_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NULL_VALUES),
        description="CSV cell texts read as missing (the whole cell). Anything else that is not a number in a "
        "numeric column fails the raw gate.",
    )

    @model_validator(mode="after")
    def _one_way_to_read_time(self) -> SourceSpec:
        if self.timestamp_format is not None and self.timestamp_unit is not None:
            raise ValueError("source.timestamp_format: give timestamp_format (text dates) or timestamp_unit (epoch "
                             "numbers), not both")
        if (self.timestamp_format or self.timestamp_unit) and not self.timestamp:
            raise ValueError("source.timestamp: timestamp_format/timestamp_unit need source.timestamp, the column "
                             "they describe")
        if self.timestamp_format is not None and "%" not in self.timestamp_format:
            raise ValueError(f"source.timestamp_format: found {self.timestamp_format!r}; expected a strftime format "
                             "such as '%Y-%m-%d %H:%M:%S' or '%d/%m/%Y'")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"found {value!r}, which is not an IANA time zone; allowed: names such as UTC, "
                             "Europe/Berlin, America/New_York" + _suggest(value, zoneinfo.available_timezones())) from None
        return value

    @field_validator("timestamp")
    @classmethod
    def _timestamp_name(cls, value: str | None) -> str | None:
        return None if value is None else check_column_name(value)

    @field_validator("key")
    @classmethod
    def _key_names(cls, value: list[str]) -> list[str]:
        return [check_column_name(v) for v in value]


class StagingSpec(_Strict):
    """Optional dbt staging between raw and features."""

    dbt_model: str = Field(description="Name of a model in the dbt project that stages this model's raw table: "
                           "the team's project in `MLPLATFORM_DBT_PROJECT_DIR`, else the bundled dbt_project/.")


MAX_FEATURES = 1000
"""Features a spec may declare unless ``MLPLATFORM_MAX_FEATURES`` says otherwise. Measured (benchmarks/wide_spec.py,
docs/configuration.md): time and memory of a run grow with the features; far beyond this a run takes minutes per
week and gigabytes before any model trains."""

MAX_FEATURES_ENV = "MLPLATFORM_MAX_FEATURES"


def max_features() -> int:
    """The features limit: ``MLPLATFORM_MAX_FEATURES`` when set (a whole number >= 1), else :data:`MAX_FEATURES`."""
    text = os.environ.get(MAX_FEATURES_ENV, "").strip()
    if not text:
        return MAX_FEATURES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_FEATURES_ENV}={text!r}: expected a whole number of features, at least 1")
    return value


class FeaturesSpec(_Strict):
    """The model's inputs: at most 1000 in all (``MLPLATFORM_MAX_FEATURES`` raises the limit)."""

    numeric: list[str] = Field(default_factory=list, description="Numeric feature columns.")
    categorical: list[str] = Field(default_factory=list, description="Categorical feature columns (any values, compared as text).")
    text: list[str] = Field(default_factory=list, description="Free-text feature columns: encoded by TF-IDF over "
                            "their words (at most 1000 words per column, learnt on the training window; a "
                            "factory gets the raw text); drift compares each document's length in words and its "
                            "share of words unseen in the reference (docs/drift.md); explanations name the words.")
    text_max_chars: int = Field(default=10_000, ge=1, le=1_000_000, description="Longest text the service accepts in a "
                                "`text` field (characters); a longer one is refused with a 422 naming the field.")

    @field_validator("numeric", "categorical", "text")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return [check_column_name(v) for v in value]

    @model_validator(mode="after")
    def _at_least_one(self) -> FeaturesSpec:
        if not self.numeric and not self.categorical and not self.text:
            raise ValueError("declare at least one feature under features.numeric, features.categorical or "
                             "features.text")
        limit = max_features()
        declared = len(self.numeric) + len(self.categorical) + len(self.text)
        if declared > limit:
            raise ValueError(f"found {declared} features; at most {limit} are allowed (the drift, training and "
                             f"explanation steps grow with each feature: see docs/configuration.md). Select fewer "
                             f"features, or raise the limit with {MAX_FEATURES_ENV} on a machine measured for it")
        overlap = sorted(set(self.numeric) & set(self.categorical))
        if overlap:
            raise ValueError(f"columns {overlap} are listed as both numeric and categorical; pick one")
        overlap = sorted(set(self.text) & (set(self.numeric) | set(self.categorical)))
        if overlap:
            raise ValueError(f"columns {overlap} are listed as text and as numeric or categorical; pick one")
        return self


class ColumnRules(_Strict):
    """Data rules for one column; they become Pandera checks on the features table."""

    min: float | None = Field(default=None, description="Smallest allowed value (inclusive).")
    max: float | None = Field(default=None, description="Largest allowed value (inclusive).")
    categories: list[str | int | float | bool] | None = Field(default=None, description="The only allowed values (compared as text).")
    nullable: bool | None = Field(
        default=None, description="Whether nulls are allowed. Default: features yes (the model imputes), target and key no."
    )


class PartitionsSpec(_Strict):
    start: date = Field(description="First week (a Monday).")
    end: date | None = Field(default=None, description="Monday after the last week; default: partitions run up to today.")
    training_window_weeks: int = Field(default=8, ge=1, description="A model for week W trains on the N weeks before W.")

    @field_validator("start", "end")
    @classmethod
    def _monday(cls, value: date | None) -> date | None:
        if value is not None and value.weekday() != 0:
            monday = value - timedelta(days=value.weekday())
            raise ValueError(f"{value} is a {value:%A}; weeks start on Monday (use {monday})")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> PartitionsSpec:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self


class EstimatorSpec(_Strict):
    class_name: str | None = Field(
        default=None, alias="class", description="Importable scikit-learn compatible estimator class; default per task."
    )
    factory: str | None = Field(
        default=None, description="The team's own preprocessing and model instead of `class`: a function in the "
        "team's installed package (`package.module.function`, a module allowed like estimator classes: "
        "`MLPLATFORM_ESTIMATOR_MODULES` or the `mlplatform.estimators` entry point) that returns an unfitted "
        "scikit-learn estimator or pipeline over the raw feature columns (numeric as floats, categoricals as text); "
        "called with `params` as keyword arguments. A change to its module changes the version's code fingerprint.")
    params: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments for the estimator (the "
                                   "factory's keyword arguments with `factory`).")

    @model_validator(mode="after")
    def _class_or_factory(self) -> EstimatorSpec:
        if self.factory is not None and self.class_name is not None:
            raise ValueError("estimator.factory: give estimator.class or estimator.factory, not both (the factory "
                             "returns the whole model)")
        return self


class BeatChampionSpec(_Strict):
    """What "better than the champion" means for the gate (a paired bootstrap on the same rows, one-sided)."""

    alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance level of the paired comparison.")
    test: Literal["non_inferiority", "superiority"] = Field(
        default="non_inferiority", description="non_inferiority: fail only a challenger significantly worse than the "
        "champion by more than `margin` on the primary metric; superiority: deploy only a challenger significantly "
        "better by more than `margin` (an equal one is refused).")
    margin: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="In the primary metric's units: how "
                          "much worse the challenger may be (non_inferiority) or how much better it must be "
                          "(superiority). 0: any significant difference decides.")


class TrainingDataGateSpec(_Strict):
    """Halt training when the training window no longer looks like what production sees."""

    enabled: bool = Field(default=True, description="Run the gate before every training.")
    max_drifted_share: float = Field(default=0.5, ge=0, le=1, description="Training halts above this share of "
                                     "features drifted between the training window and recent production inputs.")
    recent_days: int = Field(default=30, ge=1, description="Days of recent production inputs to compare with "
                             "(the days just before week W until a prediction log exists).")
    method: Literal["calibrated", "evidently"] | None = Field(default=None, description="The drift test of this gate; "
                                                             "None: the same as drift.method (and drift's alpha and min_effect).")


class MetricSpec(_Strict):
    """A team's own metric: a function of its package, usable as `gates.metric` like the built-in ones."""

    function: str = Field(description="`package.module.function(y_true, y_pred) -> float`, in an allowed module (like "
                          "estimator classes: `MLPLATFORM_ESTIMATOR_MODULES` or the `mlplatform.estimators` entry point). "
                          "y_true: the value (regression), 1.0 for the positive class else 0.0 (binary), the class index "
                          "(multiclass); y_pred: the prediction in the same encoding, or P(positive class) with "
                          "`needs_probabilities`.")
    greater_is_better: bool = Field(description="true: a higher value is better (a rate, a score); false: lower is "
                                    "better (an error, a cost). Thresholds and every comparison follow it.")
    needs_probabilities: bool = Field(default=False, description="Binary only: y_pred is P(positive class) instead "
                                      "of the decision at `evaluation.decision_threshold`.")


class GatesSpec(_Strict):
    metric: str | None = Field(default=None, description="Primary metric; default rmse / roc_auc / macro_f1 by task.")
    threshold: float | None = Field(default=None, description="Absolute bar: max for errors, min for scores. None: no bar.")
    beat_champion: BeatChampionSpec = Field(default_factory=BeatChampionSpec, description="The paired comparison "
                                            "with the current champion on the same rows.")
    training_data: TrainingDataGateSpec = Field(default_factory=TrainingDataGateSpec, description="The gate before "
                                                "training: training window vs recent production inputs.")


DEFAULT_DECISION_THRESHOLD = 0.5


class EvaluationSpec(_Strict):
    """How a model's scores become decisions, the same in every place that decides (metrics, fairness, serving and
    live performance)."""

    decision_threshold: float = Field(
        default=DEFAULT_DECISION_THRESHOLD, description="Binary models: a row is predicted as the positive class "
        "(the second of the sorted classes) when its probability is at least this (strictly between 0 and 1). Used "
        "by the metrics that need a decision (f1), the fairness rates, the label the service returns and live "
        "performance.")

    @field_validator("decision_threshold")
    @classmethod
    def _a_probability(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"found {value:g}; a probability strictly between 0 and 1 (default "
                             f"{DEFAULT_DECISION_THRESHOLD:g})")
        return value


class FairnessSpec(_Strict):
    """The fairness gate: the model's outcome must not differ too much between groups of a sensitive attribute."""

    sensitive: list[str] = Field(description="Sensitive attribute column, or a list of them (each judged on its own). "
                                 "Kept out of the features; it travels with the rows to the evaluation.")
    max_demographic_parity_difference: float = Field(
        default=0.1, ge=0, description="Largest allowed gap between groups in positive-prediction rate (binary), in "
        "any class's prediction rate (multiclass), or in mean prediction relative to the overall mean (regression).")
    max_equalized_odds_difference: float | None = Field(
        default=None, ge=0, le=1, description="Largest allowed gap between groups in true or false positive rate "
        "(binary only). None: reported, not enforced.")
    bands: dict[str, list[float]] = Field(
        default_factory=dict, description="Numeric sensitive columns cut into bands at these edges, e.g. "
        "`{age_in_years: [25, 35, 50]}` gives groups <25, 25-35 (25 included), 35-50, >=50.")
    min_group_rows: int = Field(default=20, ge=1, description="Groups with fewer evaluation rows are shown but left "
                                "out of the differences: a rate on a handful of rows decides by chance.")

    @field_validator("sensitive", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("sensitive")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one sensitive column")
        return [check_column_name(v) for v in dict.fromkeys(value)]

    @model_validator(mode="after")
    def _bands(self) -> FairnessSpec:
        for column, edges in self.bands.items():
            if column not in self.sensitive:
                raise ValueError(f"fairness.bands: {column!r} is not a sensitive column; allowed: "
                                 f"{', '.join(self.sensitive)}")
            if not edges or any(a >= b for a, b in zip(edges, edges[1:], strict=False)):
                raise ValueError(f"fairness.bands: {column}: found {edges}; expected band edges in increasing order, "
                                 "e.g. [25, 35, 50]")
        return self


class DriftSpec(_Strict):
    method: Literal["calibrated", "evidently"] = Field(
        default="calibrated", description="How a feature's drift is decided. calibrated: a two-sample p-value that "
        "accounts for both sample sizes (K-S for numerical, chi-square for categorical; asymptotic where valid, else a "
        "seeded permutation test), Benjamini-Hochberg across the week's features, and an effect-size floor. "
        "evidently: Evidently DataDriftPreset's own rule (distances vs a fixed 0.1 above 1000 reference rows).")
    max_drifted_share: float = Field(default=0.3, ge=0, le=1, description="Drift check fails above this share of drifted features.")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="calibrated: a feature can drift only when its "
                         "Benjamini-Hochberg adjusted p-value is below this (false-discovery rate across the week's features).")
    min_effect: float = Field(default=0.1, ge=0, le=1, description="calibrated: ... and its effect is at least this: "
                              "K-S D (numerical) or total variation distance (categorical), both the largest difference in "
                              "the probability of some event between reference and week (0.1 = 10 percentage points).")
    permutations: int = Field(default=2000, ge=100, description="calibrated: permutations when the asymptotic p-value is "
                              "doubtful (numerical with fewer than asymptotic_rows on a side; categorical with an expected "
                              "count below 5). Smallest p-value 1/(permutations+1).")
    permutation_rows: int = Field(default=4000, ge=100, description="calibrated: pooled rows permuted at most (all current "
                                  "rows up to half, the rest a random reference sample); bounds the cost.")
    asymptotic_rows: int = Field(default=1000, ge=10, description="calibrated: numerical features use the asymptotic K-S "
                                 "p-value when both sides have at least this many rows, else a permutation test.")
    seed: int = Field(default=0, description="calibrated: seed of the permutation tests (results are reproducible).")
    prediction_counts: bool = Field(default=False, description="Whether the champion's prediction drift (its predictions "
                                    "on week W vs on its training window) counts toward the drifted share; it is always "
                                    "reported as its own row.")
    label_counts: bool = Field(default=False, description="Whether label drift (the week's target vs the reference "
                               "window's, where labels are known) counts toward the drifted share; always reported.")
    report_rows: int = Field(default=5000, ge=100, description="Rows per side sampled into the Evidently HTML report.")
    report_features: int = Field(default=50, ge=1, description="Rows of the week's drift table shown (the plot, the "
                                 "Evidently HTML report, the metadata tables) when there are more: prediction and "
                                 "label, the drifted features, then a sample drawn with `seed`. The statistics and "
                                 "the verdict cover every feature; all rows are in the warehouse's drift table.")
    html_reports_per_run: int = Field(default=4, ge=0, description="Evidently HTML reports per run: the newest failing "
                                      "weeks (plus always the run's last week); the statistics cover every week.")


class AutomationSpec(_Strict):
    """What happens without anyone clicking."""

    weekly_schedule: bool = Field(default=True, description="Each Monday, materialize the week that just ended: data, drift "
                                  "(and the model when retrain is weekly).")
    retrain: Literal["weekly", "on_drift"] = Field(default="on_drift", description="Retrain every week, or only when the "
                                                   "drift check fails (the sensor).")
    retrain_cooldown_minutes: float = Field(default=0, ge=0, description="Minimum time between two drift-triggered "
                                            "retrains of this model (by the drift checks' timestamps).")


class RollbackSpec(_Strict):
    """When production performance sends the champion back (the live_degradation check and its sensor)."""

    max_degradation: float = Field(default=0.10, ge=0, description="Relative drop of the champion's live primary metric "
                                   "below its own evaluation (the week it was trained for) that fails the "
                                   "live_degradation check, when the bootstrap interval of the live metric excludes "
                                   "that limit too (a drop inside the noise passes).")
    min_rows: int = Field(default=50, ge=10, description="Labelled predictions a version needs in a week before its "
                          "live metric is judged (fewer: reported, not judged).")
    automatic: bool = Field(default=True, description="Whether the sensor moves `champion` back to the previous "
                            "champion (when that version scores significantly better on the same labelled rows). The "
                            "retrain it requests happens either way.")
    choose_window: bool = Field(default=True, description="After a confirmed concept change, train a candidate on the "
                                "change-point window and one on the spec's window and keep the one that scores best "
                                "out of time on the newest labelled week (the comparison is in the model step's "
                                "metadata); false: always the change-point window.")


class BusinessMetricSpec(_Strict):
    """An outcome that arrives within hours (a click), judged per arm by the canary analysis."""

    name: str = Field(default="click-through rate", description="What the rate is called in the verdict and audit.")
    positive: str = Field(description="The target value (as text) that counts as a success, e.g. `'1'` for a click; "
                          "the rate is successes over the answered predictions whose outcome arrived.")


class CanaryAnalysisSpec(_Strict):
    """How the canary is judged on live traffic, on signals that need no labels (lib/rollout_analysis.py)."""

    interval_minutes: int = Field(default=60, ge=1, description="How often the canary analysis sensor judges the "
                                  "canary (minutes).")
    window_minutes: int = Field(default=60, ge=1, description="The traffic window judged: the last this many minutes "
                                "(never before the canary's current share began).")
    min_requests: int = Field(default=200, ge=1, description="Requests each of canary and champion needs in the "
                              "window before anything is judged (fewer: continue).")
    min_minutes: float = Field(default=30, ge=0, description="Minutes the canary must have served at its current share "
                               "before it may be promoted or ramped (a significantly worse one is stopped earlier).")
    alpha: float = Field(default=0.01, gt=0, lt=0.5, description="Significance level of each one-sided test (error "
                         "rate, latency p99, predictions, business metric).")
    latency_p99_ratio: float = Field(default=1.5, gt=1, description="Canary p99 latency above this multiple of the "
                                     "champion's (and significantly so, by bootstrap) stops it.")
    max_prediction_shift: float = Field(default=0.1, gt=0, le=1, description="Largest tolerated shift of the "
                                        "canary's predictions from the champion's on the same traffic: the two-sample "
                                        "KS statistic of the scores (regression, binary) or the total variation "
                                        "distance of the class shares (multiclass); larger and significant stops it.")
    automatic_stop: bool = Field(default=True, description="Whether the analysis removes `challenger` from a "
                                 "significantly worse canary (false: it only reports).")
    business_metric: BusinessMetricSpec | None = Field(default=None, description="With `labels.path` or "
                                                       "`labels.table`: the outcomes in the window (matched to the predictions as the weekly "
                                                       "labels are) add a business signal; a canary with a "
                                                       "significantly lower rate is stopped.")


class RolloutSpec(_Strict):
    approval: Literal["manual", "auto"] = Field(default="manual", description="Who promotes challenger to champion.")
    auto_promote: Literal["immediate", "canary"] = Field(
        default="immediate", description="Under `approval: auto`, when a version that passed every gate becomes "
        "champion: `immediate` (at once), or `canary` (it serves as canary first, at `canary_percent` or the ramp's "
        "first step, and the canary analysis promotes it once its live evidence is good enough). A model's first "
        "version becomes champion at once either way (there is nothing to compare it with).")
    ramp: list[int] = Field(default_factory=list, description="Canary shares (percent, increasing, e.g. [5, 25, 50]) "
                            "the analysis raises the canary through, one step per good verdict; the first step "
                            "replaces `canary_percent`. Empty: the canary stays at `canary_percent`.")
    analysis: CanaryAnalysisSpec = Field(default_factory=CanaryAnalysisSpec, description="The hourly canary analysis "
                                         "on error rate, latency p99, the predictions and, once outcomes arrive, the "
                                         "business metric.")
    canary_percent: int = Field(default=10, ge=0, le=100, description="Share of requests the challenger serves while it "
                                "differs from the champion (chosen from the entity key, else the record id, else the "
                                "request id). A canary significantly worse than the champion on live labels is stopped.")
    shadow: bool = Field(default=False, description="Also score every request with the challenger, off the response "
                         "path; logged with role `shadow` and compared in the weekly shadow report.")
    rollback: RollbackSpec = Field(default_factory=RollbackSpec, description="When to roll back to the previous champion.")
    require_live_fairness: bool = Field(default=False, description="Refuse to promote a version (`mlplatform promote`, "
                                        "the UI's approve job, approval: auto) while the `fairness` measures on its "
                                        "live predictions (canary or shadow, grouped by the sensitive columns sent "
                                        "with the requests) fail their limits or are too few to judge. Needs a "
                                        "`fairness` section and live traffic for the challenger (docs/fairness.md).")

    @field_validator("ramp")
    @classmethod
    def _increasing_ramp(cls, ramp: list[int]) -> list[int]:
        if any(not 0 < share <= 100 for share in ramp) or any(b <= a for a, b in zip(ramp, ramp[1:], strict=False)):
            raise ValueError(f"rollout.ramp must be increasing percentages in (0, 100], e.g. [5, 25, 50]; got {ramp}")
        return ramp

    @property
    def first_share(self) -> float:
        """The share a new canary starts at: the ramp's first step, else ``canary_percent``."""
        return float(self.ramp[0]) if self.ramp else float(self.canary_percent)


class LabelsSpec(_Strict):
    """Where the outcomes of served predictions come from, when not from the model's own source rows."""

    path: str | None = Field(default=None, description="CSV (optionally .gz) or Parquet file of outcomes, relative to "
                             "the spec file: the key columns (`source.key`; else `_id`, the record id clients sent), the "
                             "target column, and the time column (`timestamp`) that puts each outcome in its week. The same rules as "
                             "`source.path`: a regular, non-empty file inside the spec's folder or a data root.")
    table: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$",
                              description="A warehouse table (`schema.table`, e.g. one a dbt model builds) with the "
                              "same columns as `path`: in the model's own schema or one no model owns (e.g. `main`), "
                              "never another model's, `audit` or a DuckDB system schema.")
    timestamp: str | None = Field(default=None, description="Column of `path`/`table` holding the event time of the "
                                  "predicted row (default: the spec's `source.timestamp`).")

    @model_validator(mode="after")
    def _one_place(self) -> LabelsSpec:
        if self.path is not None and self.table is not None:
            raise ValueError("give labels.path or labels.table, not both")
        if self.path is None and self.table is None:
            raise ValueError("give labels.path (a file) or labels.table (a warehouse table); leave `labels` out to "
                             "take outcomes from the source rows")
        return self


class ScoringSpec(_Strict):
    """How the model's predictions are made besides the REST service."""

    batch: bool = Field(default=False, description="Add the weekly asset `<model>/scores`: the champion's "
                        "predictions of week W's feature rows, with version and role `batch`, written to the table "
                        "`<model>.scores` and to the prediction log (so drift on production inputs, live "
                        "performance and the audit cover the model). Needs `source.key` (what outcomes are matched "
                        "on); the weekly job runs it.")
    table: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$",
                              description="Score the rows of this warehouse table (`schema.table`, e.g. a dbt mart of "
                              "the customers to score) instead of the model's features: week W's rows by the spec's "
                              "time column, with the key and feature columns. In the model's own schema or one no "
                              "model owns, like `labels.table`. Needs `batch: true`.")

    @model_validator(mode="after")
    def _table_needs_batch(self) -> ScoringSpec:
        if self.table is not None and not self.batch:
            raise ValueError("scoring.table: set scoring.batch: true as well (the table is what the batch scores)")
        return self


class ModelSpec(_Strict):
    """One model's lifecycle, as declared by its team."""

    name: str = Field(pattern=NAME_PATTERN, description="Asset key prefix, group name and warehouse schema: not a "
                      "SQL keyword, a DuckDB system schema (`main`, `information_schema`, `pg_*`, ...) or the "
                      "platform's `audit`.")
    description: str = Field(default="", description="Shown on every asset of the model in the Dagster UI.")
    owner: str | None = Field(default=None, description="Owner shown in the Dagster UI: an email or `team:name`.")
    team: str | None = Field(default=None, pattern=TEAM_PATTERN, description="The team the model belongs to "
                             "(lowercase letters, digits, `-`, `_`): every asset shows the owner `team:<team>` and "
                             "the tag `team`, the jobs' runs the tag `team`, so the Dagster UI filters by it; "
                             "`mlplatform validate` and the code location report per team. In a team folder "
                             "(`<spec root>/<team>/*.yaml`) it defaults to the folder's name and may not differ "
                             "from it. None and no team folder: the team of `owner: team:<name>`, if any.")
    owners: list[str] = Field(default_factory=list, description="The team's people or groups, shown as Dagster "
                              "owners beside `team:<team>` and `owner`: email addresses or `team:<name>`.")
    policy: str | None = Field(default=None, description="The platform policy this model falls under (`regulated` "
                               "built in, others in `policies.yaml` beside the specs or the file `MLPLATFORM_POLICIES` "
                               "names): what the spec may not switch off. None: the policy file's `default`, if any.")
    limitations: list[str] = Field(default_factory=list, description="Known limitations, one sentence each: shown "
                                   "on the model card of every version (with the ones the platform adds itself).")
    task: Literal["regression", "binary", "multiclass"] = Field(description="What the model predicts; sets the "
                                                                 "metrics, the default estimator and the plots.")
    source: SourceSpec = Field(description="The data file.")
    staging: StagingSpec | None = Field(default=None, description="Optional dbt staging; without it features come "
                                        "straight from raw.")
    target: str = Field(description="The column to predict (never null; for classification its values are the classes).")
    features: FeaturesSpec = Field(description="Feature columns, each a column of the source (or of the dbt model); "
                                   "at most 1000 in all unless `MLPLATFORM_MAX_FEATURES` allows more.")
    columns: dict[str, ColumnRules] = Field(default_factory=dict, description="Data rules per column, checked by the "
                                            "features gate.")
    partitions: PartitionsSpec = Field(description="The weekly partitions and the training window.")
    estimator: EstimatorSpec = Field(default_factory=EstimatorSpec, description="The model.")
    metrics: dict[str, MetricSpec] = Field(default_factory=dict, description="The team's own metrics by name (a "
                                           "name like a model name, not a built-in metric's): each may be "
                                           "`gates.metric`, and every metric here is evaluated with the task's own.")
    gates: GatesSpec = Field(default_factory=GatesSpec, description="What a new version must pass.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="How scores become decisions.")
    fairness: FairnessSpec | None = Field(default=None, description="The fairness gate, one of the model gates: a "
                                          "version failing it gets no alias. None: no fairness gate.")
    drift: DriftSpec = Field(default_factory=DriftSpec, description="The weekly drift check.")
    automation: AutomationSpec = Field(default_factory=AutomationSpec, description="Schedules and sensors.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Promotion, serving rollout and rollback.")
    labels: LabelsSpec | None = Field(default=None, description="Where outcomes of served predictions come from (for "
                                      "live performance). None: the target column of the model's own rows.")
    scoring: ScoringSpec = Field(default_factory=ScoringSpec, description="Batch scoring (off by default).")

    spec_file: Path = Field(default=Path("."), exclude=True, description="(set by the loader)")
    _policy_rules: Any = PrivateAttr(default=None)  # the resolved Policy, set by the loader; never from the YAML
    _folder_team: str | None = PrivateAttr(default=None)  # the team folder the loader found the file in

    @property
    def team_name(self) -> str | None:
        """The model's team: ``team``, else its team folder's name, else the name of ``owner: team:<name>``."""
        if self.team or self._folder_team:
            return self.team or self._folder_team
        if self.owner and self.owner.startswith("team:") and re.match(TEAM_PATTERN, self.owner[5:]):
            return self.owner[5:]
        return None

    @field_validator("owners")
    @classmethod
    def _owner_addresses(cls, value: list[str]) -> list[str]:
        for owner in value:
            if not isinstance(owner, str) or not re.match(OWNER_PATTERN, owner):
                raise ValueError(f"found {str(owner)[:80]!r}; an owner is an email address (alice@example.com) or "
                                 "a group as team:<name> (team:fraud-oncall)")
        return value

    @property
    def policy_rules(self) -> Any:
        """The :class:`~mlplatform.specs.policies.Policy` this spec falls under, as the loader resolved it (None:
        none, or the spec was not loaded through the loader)."""
        return self._policy_rules

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        problem = reserved_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("target")
    @classmethod
    def _target_name(cls, value: str) -> str:
        return check_column_name(value)

    @field_validator("limitations", mode="before")
    @classmethod
    def _one_or_more(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("columns")
    @classmethod
    def _rule_names(cls, value: dict[str, ColumnRules]) -> dict[str, ColumnRules]:
        for name in value:
            check_column_name(name)
        return value

    @model_validator(mode="after")
    def _labels_table(self) -> ModelSpec:
        if self.labels is not None and self.labels.table is not None:
            problem = labels_table_problem(self.labels.table, self.name)
            if problem:
                raise ValueError(f"labels.table: {problem}")
        return self

    @model_validator(mode="after")
    def _live_fairness_needs_fairness(self) -> ModelSpec:
        if self.rollout.require_live_fairness and self.fairness is None:
            raise ValueError("rollout.require_live_fairness: needs a fairness section (the sensitive columns and "
                             "limits to judge live predictions by); add one, or remove the key")
        if self.rollout.require_live_fairness and not (self.rollout.shadow or self.rollout.canary_percent > 0):
            raise ValueError("rollout.require_live_fairness: a new version would never get live predictions to be "
                             "judged on: set rollout.shadow: true or rollout.canary_percent above 0")
        return self

    @model_validator(mode="after")
    def _batch_needs_a_key(self) -> ModelSpec:
        if self.scoring.table is not None:
            problem = labels_table_problem(self.scoring.table, self.name, what="rows to score")
            if problem:
                raise ValueError(f"scoring.table: {problem}")
        if self.scoring.batch and not self.source.key:
            raise ValueError("scoring.batch: needs source.key, the columns that identify a row: a batch score is "
                             "matched with its outcome on them. Add source.key, or remove scoring.batch")
        return self

    @model_validator(mode="after")
    def _task_defaults(self) -> ModelSpec:
        builtin = {m for metrics in METRICS_BY_TASK.values() for m in metrics}
        for name, declared in self.metrics.items():
            if not re.match(NAME_PATTERN, name) or name in builtin:
                raise ValueError(f"metrics.{name}: found {name!r}; a team metric's name is lowercase letters, digits "
                                 "and underscores, starting with a letter, and not a built-in metric's "
                                 f"({', '.join(sorted(builtin))})")
            if declared.needs_probabilities and self.task != "binary":
                raise ValueError(f"metrics.{name}: needs_probabilities is for task binary only (a {self.task} model's "
                                 "metric reads its predictions); remove the key")
        if self.gates.metric is None:
            self.gates.metric = DEFAULT_METRIC[self.task]
        elif self.gates.metric not in (*METRICS_BY_TASK[self.task], *self.metrics):
            allowed = (*METRICS_BY_TASK[self.task], *self.metrics)
            raise ValueError(
                f"gates.metric: found {self.gates.metric!r}; allowed for task {self.task}: {', '.join(allowed)}"
                + _suggest(self.gates.metric, allowed)
            )
        if self.estimator.class_name is None and self.estimator.factory is None:
            self.estimator.class_name = DEFAULT_ESTIMATOR[self.task]
        threshold = self.evaluation.decision_threshold
        if self.task != "binary" and threshold != DEFAULT_DECISION_THRESHOLD:
            raise ValueError(f"evaluation.decision_threshold: found {threshold:g} for task {self.task}; only a binary "
                             "model turns a probability into a decision: remove the key")
        return self

    # Derived facts used by the asset factories.
    @property
    def feature_columns(self) -> list[str]:
        return [*self.features.numeric, *self.features.categorical, *self.features.text]

    @property
    def estimator_name(self) -> str:
        """What builds the model, as people read it: the estimator class, or ``factory <dotted>``."""
        return f"factory {self.estimator.factory}" if self.estimator.factory else (self.estimator.class_name or "")

    @property
    def time_column(self) -> str:
        return self.source.timestamp or SNAPSHOT_TIME_COLUMN

    @property
    def source_path(self) -> Path:
        """The data file as written (made absolute, symlinks NOT resolved: ``files.checked_data_path`` does that)."""
        path = Path(self.source.path).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else self.spec_file.parent / path))

    @property
    def labels_path(self) -> Path | None:
        """``labels.path`` as written, made absolute like :attr:`source_path`; None without a labels file."""
        if self.labels is None or self.labels.path is None:
            return None
        path = Path(self.labels.path).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else self.spec_file.parent / path))

    @property
    def modelling_columns(self) -> list[str]:
        """Columns of the features table, in order: time, key, sensitive, features, target."""
        ordered = [self.time_column, *self.source.key]
        if self.fairness:
            ordered += self.fairness.sensitive
        ordered += [*self.feature_columns, self.target]
        return list(dict.fromkeys(ordered))

    @property
    def numeric_columns(self) -> list[str]:
        """Columns whose values must be numbers (numeric features, a regression target)."""
        return [*self.features.numeric, *([self.target] if self.task == "regression" else [])]

    @property
    def primary_metric(self) -> str:
        return self.gates.metric or DEFAULT_METRIC[self.task]

    @property
    def decision_threshold(self) -> float:
        """The probability at or above which a binary model predicts the positive class (``evaluation``)."""
        return self.evaluation.decision_threshold


class SpecProblem(BaseModel):
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class SpecError(ValueError):
    """Every problem found in the specs, one line each."""

    SHOWN = 25
    """Problems in the message; all of them stay in ``problems`` (and ``mlplatform validate`` prints all)."""

    def __init__(self, problems: list[SpecProblem]):
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems[:self.SHOWN])
        more = f"\n  ... and {len(problems) - self.SHOWN} more: run `mlplatform validate`" if len(problems) > self.SHOWN else ""
        super().__init__(f"{len(problems)} problem(s) in model specs:\n{lines}{more}")

    def __reduce__(self):  # picklable across Dagster's code-server boundary with its problems intact
        return (type(self), (self.problems,))


def _suggest(found: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(found), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
