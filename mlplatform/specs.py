"""Model specs: the YAML contract a team writes, validated into :class:`ModelSpec`.

A bad spec must stop the code location from loading with one line per problem
naming the file, the key, what was found and what is allowed, so a user fixes
every mistake in one pass instead of one per reload.
"""

from __future__ import annotations

import difflib
import importlib
import json
from collections.abc import Callable, Iterable
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlplatform.lib.source import SNAPSHOT_TIME_COLUMN, source_columns
from mlplatform.lib.tasks import DEFAULT_ESTIMATOR, DEFAULT_METRIC, METRICS_BY_TASK, TASKS

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"


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


class StagingSpec(_Strict):
    """Optional dbt staging between raw and features."""

    dbt_model: str = Field(description="Name of a model in dbt_project/ that stages this model's raw table.")


class FeaturesSpec(_Strict):
    numeric: list[str] = Field(default_factory=list, description="Numeric feature columns.")
    categorical: list[str] = Field(default_factory=list, description="Categorical feature columns (any values, compared as text).")

    @model_validator(mode="after")
    def _at_least_one(self) -> FeaturesSpec:
        if not self.numeric and not self.categorical:
            raise ValueError("declare at least one feature under features.numeric or features.categorical")
        overlap = sorted(set(self.numeric) & set(self.categorical))
        if overlap:
            raise ValueError(f"columns {overlap} are listed as both numeric and categorical; pick one")
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
    params: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments for the estimator.")


class BeatChampionSpec(_Strict):
    alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance level of the paired comparison.")


class TrainingDataGateSpec(_Strict):
    """Halt training when the training window no longer looks like what production sees."""

    enabled: bool = Field(default=True, description="Run the gate before every training.")
    max_drifted_share: float = Field(default=0.5, ge=0, le=1, description="Training halts above this share of "
                                     "features drifted between the training window and recent production inputs.")
    recent_days: int = Field(default=30, ge=1, description="Days of recent production inputs to compare with "
                             "(the days just before week W until a prediction log exists).")
    method: Literal["calibrated", "evidently"] | None = Field(default=None, description="The drift test of this gate; "
                                                             "None: the same as drift.method (and drift's alpha and min_effect).")


class GatesSpec(_Strict):
    metric: str | None = Field(default=None, description="Primary metric; default rmse / roc_auc / macro_f1 by task.")
    threshold: float | None = Field(default=None, description="Absolute bar: max for errors, min for scores. None: no bar.")
    beat_champion: BeatChampionSpec = Field(default_factory=BeatChampionSpec, description="The paired comparison "
                                            "with the current champion on the same rows.")
    training_data: TrainingDataGateSpec = Field(default_factory=TrainingDataGateSpec, description="The gate before "
                                                "training: training window vs recent production inputs.")


class FairnessSpec(_Strict):
    sensitive: str = Field(description="Sensitive attribute column (kept out of the features).")
    max_demographic_parity_difference: float = Field(default=0.1, ge=0, le=1, description="Largest allowed gap in "
                                                     "positive-prediction rate between groups.")


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
    max_degradation: float = Field(default=0.10, ge=0, description="Relative drop in the live primary metric that "
                                   "triggers rollback (serving: not built yet).")


class RolloutSpec(_Strict):
    approval: Literal["manual", "auto"] = Field(default="manual", description="Who promotes challenger to champion.")
    canary_percent: int = Field(default=10, ge=0, le=100, description="Share of requests the challenger serves in a "
                                "canary (serving: not built yet).")
    shadow: bool = Field(default=False, description="Score the challenger in the shadow of the champion (serving: not "
                         "built yet).")
    rollback: RollbackSpec = Field(default_factory=RollbackSpec, description="When to roll back to the previous champion.")


class ModelSpec(_Strict):
    """One model's lifecycle, as declared by its team."""

    name: str = Field(pattern=NAME_PATTERN, description="Asset key prefix and group name.")
    description: str = Field(default="", description="Shown on every asset of the model in the Dagster UI.")
    owner: str | None = Field(default=None, description="Owner shown in the Dagster UI: an email or `team:name`.")
    task: Literal["regression", "binary", "multiclass"] = Field(description="What the model predicts; sets the "
                                                                 "metrics, the default estimator and the plots.")
    source: SourceSpec = Field(description="The data file.")
    staging: StagingSpec | None = Field(default=None, description="Optional dbt staging; without it features come "
                                        "straight from raw.")
    target: str = Field(description="The column to predict (never null; for classification its values are the classes).")
    features: FeaturesSpec = Field(description="Feature columns, each a column of the source (or of the dbt model).")
    columns: dict[str, ColumnRules] = Field(default_factory=dict, description="Data rules per column, checked by the "
                                            "features gate.")
    partitions: PartitionsSpec = Field(description="The weekly partitions and the training window.")
    estimator: EstimatorSpec = Field(default_factory=EstimatorSpec, description="The model.")
    gates: GatesSpec = Field(default_factory=GatesSpec, description="What a new version must pass.")
    fairness: FairnessSpec | None = Field(default=None, description="Fairness gate settings (declared, not enforced "
                                          "yet: a later issue).")
    drift: DriftSpec = Field(default_factory=DriftSpec, description="The weekly drift check.")
    automation: AutomationSpec = Field(default_factory=AutomationSpec, description="Schedules and sensors.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Promotion; serving settings for a later issue.")

    spec_file: Path = Field(default=Path("."), exclude=True, description="(set by the loader)")

    @model_validator(mode="after")
    def _task_defaults(self) -> ModelSpec:
        if self.gates.metric is None:
            self.gates.metric = DEFAULT_METRIC[self.task]
        elif self.gates.metric not in METRICS_BY_TASK[self.task]:
            allowed = METRICS_BY_TASK[self.task]
            raise ValueError(
                f"gates.metric: found {self.gates.metric!r}; allowed for task {self.task}: {', '.join(allowed)}"
                + _suggest(self.gates.metric, allowed)
            )
        if self.estimator.class_name is None:
            self.estimator.class_name = DEFAULT_ESTIMATOR[self.task]
        return self

    # Derived facts used by the asset factories.
    @property
    def feature_columns(self) -> list[str]:
        return [*self.features.numeric, *self.features.categorical]

    @property
    def time_column(self) -> str:
        return self.source.timestamp or SNAPSHOT_TIME_COLUMN

    @property
    def source_path(self) -> Path:
        path = Path(self.source.path).expanduser()
        return path if path.is_absolute() else (self.spec_file.parent / path).resolve()

    @property
    def modelling_columns(self) -> list[str]:
        """Columns of the features table, in order: time, key, sensitive, features, target."""
        ordered = [self.time_column, *self.source.key]
        if self.fairness:
            ordered.append(self.fairness.sensitive)
        ordered += [*self.feature_columns, self.target]
        return list(dict.fromkeys(ordered))

    @property
    def numeric_columns(self) -> list[str]:
        """Columns whose values must be numbers (numeric features, a regression target)."""
        return [*self.features.numeric, *([self.target] if self.task == "regression" else [])]

    @property
    def primary_metric(self) -> str:
        return self.gates.metric or DEFAULT_METRIC[self.task]


class SpecProblem(BaseModel):
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class SpecError(ValueError):
    """Every problem found in the specs, one line each."""

    def __init__(self, problems: list[SpecProblem]):
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{len(problems)} problem(s) in model specs:\n{lines}")


DbtColumns = Callable[[str], list[str] | None]
"""Looks up the declared columns of a dbt model by name; None when there is no such model."""


def load_specs(folder: Path, dbt_model_columns: DbtColumns | None = None) -> list[ModelSpec]:
    """Load and validate every ``*.yaml``/``*.yml`` in ``folder`` (hidden files such as editor locks are skipped);
    raise :class:`SpecError` listing all problems."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpecError([SpecProblem(file=str(folder), key="MLPLATFORM_SPECS", message="folder does not exist")])
    files = sorted(f for f in [*folder.glob("*.yaml"), *folder.glob("*.yml")] if not f.name.startswith("."))
    if not files:
        raise SpecError(
            [SpecProblem(file=str(folder), key="MLPLATFORM_SPECS", message="no *.yaml model specs in this folder")]
        )
    problems: list[SpecProblem] = []
    specs: list[ModelSpec] = []
    for file in files:
        spec, file_problems = load_spec_file(file, dbt_model_columns)
        problems += file_problems
        if spec is not None:
            specs.append(spec)
    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.name in seen:
            problems.append(
                SpecProblem(
                    file=str(spec.spec_file),
                    key="name",
                    message=f"model name {spec.name!r} is already used by {seen[spec.name]}; names must be unique",
                )
            )
        seen.setdefault(spec.name, spec.spec_file)
    if problems:
        raise SpecError(problems)
    return specs


def load_spec_file(file: Path, dbt_model_columns: DbtColumns | None = None) -> tuple[ModelSpec | None, list[SpecProblem]]:
    """One spec file: (spec or None, problems)."""
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        return None, [SpecProblem(file=str(file), key="(yaml)", message=f"not valid YAML: {error}")]
    except UnicodeDecodeError as error:
        return None, [SpecProblem(file=str(file), key="(file)", message=f"not UTF-8 text ({error}); save it as UTF-8")]
    except OSError as error:
        return None, [SpecProblem(file=str(file), key="(file)", message=f"cannot be read: {error}")]
    if not isinstance(raw, dict):
        return None, [SpecProblem(file=str(file), key="(top level)", message="expected a mapping of keys, found "
                                  f"{type(raw).__name__}")]
    try:
        spec = ModelSpec.model_validate({**raw, "spec_file": file.resolve()})
    except ValidationError as error:
        return None, [SpecProblem(file=str(file), key=key, message=message) for key, message in _explain(error)]
    return spec, [SpecProblem(file=str(file), key=key, message=message) for key, message in _check_against_world(spec, dbt_model_columns)]


def _check_against_world(spec: ModelSpec, dbt_model_columns: DbtColumns | None) -> Iterable[tuple[str, str]]:
    """Checks that need more than the YAML: the source file, the dbt project, the estimator class."""
    try:
        path = spec.source_path
    except RuntimeError as error:  # "~user/..." naming a user this machine does not have
        yield "source.path", f"found {spec.source.path!r}; {error}"
        return
    if not path.exists():
        yield "source.path", f"file {path} does not exist"
        return
    try:
        available = source_columns(path)
    except Exception as error:  # noqa: BLE001 - any reader error is reported as a spec problem
        yield "source.path", f"cannot read the header of {path}: {error}"
        return
    if spec.source.timestamp and spec.source.timestamp not in available:
        yield "source.timestamp", _not_a_column(spec.source.timestamp, available, f"source {path.name}")
    for key_column in spec.source.key:
        if key_column not in available:
            yield "source.key", _not_a_column(key_column, available, f"source {path.name}")
    modelling_columns, where = available, f"source {path.name}"
    if spec.staging is not None:
        staged = dbt_model_columns(spec.staging.dbt_model) if dbt_model_columns else None
        if staged is None:
            yield "staging.dbt_model", f"no dbt model named {spec.staging.dbt_model!r} in dbt_project/models"
            return
        modelling_columns, where = staged, f"dbt model {spec.staging.dbt_model} (columns declared in its schema .yml)"
    if spec.target not in modelling_columns:
        yield "target", _not_a_column(spec.target, modelling_columns, where)
    for kind in ("numeric", "categorical"):
        for column in getattr(spec.features, kind):
            if column not in modelling_columns:
                yield f"features.{kind}", _not_a_column(column, modelling_columns, where)
    if spec.target in spec.feature_columns:
        yield "features", f"target {spec.target!r} is also listed as a feature; remove it from features"
    if spec.fairness is not None:
        if spec.fairness.sensitive not in modelling_columns:
            yield "fairness.sensitive", _not_a_column(spec.fairness.sensitive, modelling_columns, where)
        if spec.fairness.sensitive in spec.feature_columns:
            yield "fairness.sensitive", f"{spec.fairness.sensitive!r} is also a feature; a sensitive attribute is kept out of the features"
    for column, rules in spec.columns.items():
        if column not in spec.modelling_columns:
            yield f"columns.{column}", (
                f"rules for {column!r}, which is not a target, feature, key or sensitive column of this spec"
                + _suggest(column, spec.modelling_columns)
            )
        if rules.min is not None and rules.max is not None and rules.min > rules.max:
            yield f"columns.{column}", f"min {rules.min} is greater than max {rules.max}"
    yield from _check_estimator(spec)


def _check_estimator(spec: ModelSpec) -> Iterable[tuple[str, str]]:
    dotted = spec.estimator.class_name or ""
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        yield "estimator.class", f"found {dotted!r}; give the full import path, e.g. sklearn.ensemble.RandomForestRegressor"
        return
    try:
        module = importlib.import_module(module_name)
    except (ImportError, TypeError, ValueError) as error:  # TypeError: a relative name such as ".sklearn"
        yield "estimator.class", f"found {dotted!r}; module {module_name!r} cannot be imported ({error})"
        return
    estimator_class = getattr(module, class_name, None)
    if estimator_class is None:
        candidates = [name for name in dir(module) if name[:1].isupper()]
        yield "estimator.class", f"found {dotted!r}; {module_name} has no class {class_name!r}" + _suggest(class_name, candidates)
        return
    if not (hasattr(estimator_class, "fit") and hasattr(estimator_class, "predict")):
        yield "estimator.class", f"found {dotted!r}; it is not an estimator (needs fit and predict)"
        return
    if hasattr(estimator_class, "_get_param_names"):
        accepted = estimator_class._get_param_names()
        for param in spec.estimator.params:
            if param not in accepted:
                yield f"estimator.params.{param}", f"{class_name} has no parameter {param!r}" + _suggest(param, accepted)


def dbt_manifest_columns(manifest_path: Path) -> DbtColumns:
    """A lookup of declared dbt model columns from a manifest.json (plain JSON: no dbt import needed)."""
    models: dict[str, list[str]] = {}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        for node in manifest.get("nodes", {}).values():
            if node.get("resource_type") == "model":
                models[node["name"]] = list(node.get("columns", {}))
    return models.get


def _not_a_column(found: str, available: list[str], where: str) -> str:
    shown = ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
    return f"found {found!r}, which is not a column of {where}" + _suggest(found, available) + f"; columns: {shown}"


def _suggest(found: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(found), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _explain(error: ValidationError) -> Iterable[tuple[str, str]]:
    """Turn pydantic's errors into (dotted key, message saying what was found and what is allowed)."""
    for item in error.errors():
        loc = [str(part) for part in item["loc"] if part != "spec_file"]
        key = ".".join(loc) or "(top level)"
        kind = item["type"]
        found = item.get("input")
        if kind == "missing":
            yield key, "required key is missing"
        elif kind == "extra_forbidden":
            allowed = _allowed_keys(item["loc"][:-1])
            yield key, f"unknown key{_suggest(loc[-1], allowed)}; allowed keys here: {', '.join(allowed)}"
        elif kind == "literal_error":
            allowed = [str(a) for a in _literal_choices(item["loc"])] or [item["ctx"]["expected"]]
            yield key, f"found {found!r}; allowed: {', '.join(allowed)}" + _suggest(found, allowed)
        elif kind == "string_pattern_mismatch" and loc == ["name"]:
            yield key, (f"found {found!r}; a model name is lowercase letters, digits and underscores, "
                        "starting with a letter (e.g. bike_demand)")
        elif kind in ("float_parsing", "float_type", "int_parsing", "int_type"):
            yield key, f"found {found!r}; expected a number"
        elif kind == "value_error":
            yield key, str(item["msg"]).removeprefix("Value error, ")
        else:
            yield key, f"{item['msg']}; found {found!r}"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The spec section at ``loc``; a mapping's own keys (``columns.<name>``) are stepped over."""
    model: type[BaseModel] | None = ModelSpec
    mapping_key_next = False
    for part in loc:
        if mapping_key_next:
            mapping_key_next = False
            continue
        if model is None or not isinstance(part, str):
            return model
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return None
        model = _unwrap_model(field.annotation)
        mapping_key_next = get_origin(field.annotation) is dict
    return model


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is dict:
        return _unwrap_model(get_args(annotation)[1])
    for arg in get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model = _model_at(loc)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items() if name != "spec_file"]


def _literal_choices(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    model = _model_at(loc[:-1])
    if model is None:
        return ()
    field = model.model_fields.get(str(loc[-1]))
    return get_args(field.annotation) if field is not None else ()


__all__ = ["ModelSpec", "SpecError", "SpecProblem", "TASKS", "dbt_manifest_columns", "load_specs"]
