"""Every name the platform gives things, in one place: asset keys, checks, tables, jobs, schedules, sensors.

Plain strings (no Dagster import), so the Dagster wiring, the runner, the CLI and ``lib/``
spell each name the same way. A model's assets are ``<model>/<stage>``; its tables live in
the warehouse schema named after the model.
"""

from __future__ import annotations

# Asset stages: the key of a model's asset is [model, stage].
RAW = "raw"
STAGED = "staged"
FEATURES = "features"
MODEL = "model"
EVALUATION = "evaluation"
BACKTEST = "backtest"
DRIFT = "drift"
PREDICTION_LOG = "prediction_log"  # what the REST service answered, read from its Parquet log
AUDIT_TRAIL = "audit_trail"  # the model's audit events, reported by the steps and jobs that write them
LABELS = "labels"  # outcomes known for week W's rows (they arrive after the predictions)
LIVE_PERFORMANCE = "live_performance"  # logged predictions joined with their labels, per version and role
SHADOW_REPORT = "shadow_report"  # challenger vs champion on the same requests
SCORES = "scores"  # the champion's batch predictions of week W's rows (spec scoring.batch)

# Checks, by the asset they are on.
RAW_CHECK = "source_contract"  # on raw
FEATURES_CHECK = "schema"  # on features
DRIFT_CHECK = "drifted_share"  # on drift: what the retrain sensor reacts to
LIVE_DEGRADATION_CHECK = "live_degradation"  # on live_performance: what the rollback sensor reacts to
CANARY_CHECK = "canary"  # on live_performance: a canary worse than the champion is stopped

# Warehouse tables in the model's schema (besides the assets' own tables raw, staged, features).
PREDICTIONS_TABLE = "predictions"
EVALUATIONS_TABLE = "evaluations"
DRIFT_TABLE = "drift"
LABELS_TABLE = "labels"
LIVE_TABLE = "live_performance"
SHADOW_TABLE = "shadow"
SCORES_TABLE = "scores"
RECOVERY_TABLE = "recovery"  # recoveries from concept changes: the level to return to, per judged week

# The audit trail (warehouse schema "audit").
AUDIT_SCHEMA = "audit"
ALIAS_CHANGES_TABLE = "alias_changes"
AUDIT_EVENTS_TABLE = "events"  # every lifecycle event, hash-chained per model

# Artifacts of a version's MLflow run besides the model (read back by `mlplatform card` and serving's /explain).
GATES_ARTIFACT = "gates.json"
IMPORTANCE_JSON = "feature_importance.json"
IMPORTANCE_PNG = "feature_importance.png"
BACKGROUND_PARQUET = "explain_background.parquet"  # training rows a non-tree version is explained against
MODEL_CARD_MD = "model_card.md"
MODEL_CARD_HTML = "model_card.html"

# Tags of a version whose spec names `estimator.factory` (the team's own code).
CODE_FACTORY_TAG = "code.factory"
"""Version tag: the team's ``estimator.factory`` (when the spec names one)."""
CODE_FINGERPRINT_TAG = "code.fingerprint"
"""Version tag: SHA-256 of the factory's module source (what the audit and ``reproduce`` show of the team's code)."""

# Run tags the automation writes.
TRIGGER_TAG = "mlplatform/trigger"
DRIFT_WEEK_TAG = "mlplatform/drift_week"
DRIFT_CHECK_RECORD_TAG = "mlplatform/drift_check_record"
DRIFT_CHECK_TIME_TAG = "mlplatform/drift_check_timestamp"
DRIFT_TRIGGER = "drift"  # TRIGGER_TAG values: why a retrain run was requested
DECAY_TRIGGER = "performance_decay"
DECAY_WEEK_TAG = "mlplatform/decay_week"  # the week whose live performance failed
DECAY_CHECK_RECORD_TAG = "mlplatform/decay_check_record"
MLFLOW_EXPERIMENT_TAG = "mlplatform/mlflow_experiment"  # a training job's tag: the experiment of its MLflow run
MLFLOW_RESOURCE = "mlflow"  # the resource key dagster-mlflow's hook requires
RECOVERY_TAG = "mlplatform/recovery"  # "true" on a retrain a recovery from a concept change asked for (check passed)


def asset_path(model: str, stage: str) -> list[str]:
    """The asset key of a model's stage, as a path: ``["bike_demand", "features"]``."""
    return [model, stage]


def pipeline_job(model: str) -> str:
    """Every asset of the model: what `mlplatform demo` and a UI backfill of the group run."""
    return f"{model}_pipeline"


def retrain_job(model: str) -> str:
    """Model, evaluation and backtest for one week: what the retrain sensor requests."""
    return f"{model}_retrain"


def weekly_job(model: str) -> str:
    """The week that just ended: what the weekly schedule runs."""
    return f"{model}_weekly"


def approve_job(model: str) -> str:
    """A person approves a version as champion from the UI (as `mlplatform promote`)."""
    return f"{model}_approve"


def rollback_job(model: str) -> str:
    """A person rolls the champion back from the UI (as `mlplatform rollback`)."""
    return f"{model}_rollback"


def production_job(model: str) -> str:
    """Labels, live performance and the shadow report for some weeks: run when a week's outcomes have arrived."""
    return f"{model}_production"


def weekly_schedule(model: str) -> str:
    """Dagster names a schedule built from a partitioned job after the job."""
    return f"{weekly_job(model)}_schedule"


def retrain_sensor(model: str) -> str:
    return f"{model}_retrain_on_drift"


def decay_sensor(model: str) -> str:
    """Rolls back and retrains when the live_degradation check fails."""
    return f"{model}_rollback_on_decay"


def model_from_pipeline_job(job_name: str) -> str | None:
    """The model a pipeline job belongs to, or None for any other job."""
    suffix = pipeline_job("")
    return job_name[: -len(suffix)] if job_name.endswith(suffix) and len(job_name) > len(suffix) else None


def model_pool(model: str) -> str:
    """The concurrency pool of every asset and op of a model. In the shared mode each pool has one slot (run
    granularity), so two runs of one model never overlap; the embedded mode sets no pool limit."""
    return f"mlplatform/{model}"


def multi_asset_op(model: str, step: str) -> str:
    """Op names of a model's multi-assets (``<model>_drift``, ``<model>_model_and_evaluation``, ``<model>_staged``)."""
    return f"{model}_{step}"


def canary_job(model: str) -> str:
    """One canary analysis, carried out (what the canary sensor runs; as `mlplatform canary --apply`)."""
    return f"{model}_canary_analysis"


def canary_sensor(model: str) -> str:
    """Requests the canary analysis every `rollout.analysis.interval_minutes` while a canary serves."""
    return f"{model}_canary_sensor"
