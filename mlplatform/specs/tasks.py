"""What each task type means for metrics, so specs, gates and reports agree."""

from __future__ import annotations

TASKS: tuple[str, ...] = ("regression", "binary", "multiclass")

METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "regression": ("rmse", "mae", "r2"),
    "binary": ("roc_auc", "pr_auc", "f1", "log_loss", "brier"),
    "multiclass": ("accuracy", "macro_f1"),
}

DEFAULT_METRIC: dict[str, str] = {"regression": "rmse", "binary": "roc_auc", "multiclass": "macro_f1"}

DEFAULT_ESTIMATOR: dict[str, str] = {
    "regression": "sklearn.ensemble.HistGradientBoostingRegressor",
    "binary": "sklearn.ensemble.HistGradientBoostingClassifier",
    "multiclass": "sklearn.ensemble.HistGradientBoostingClassifier",
}

LOWER_IS_BETTER: frozenset[str] = frozenset({"rmse", "mae", "log_loss", "brier"})


def is_lower_better(metric: str) -> bool:
    """Errors are minimised, scores maximised; thresholds and comparisons flip accordingly. A team's own metric
    (``metrics:`` in its spec, registered when the spec loads) says which it is."""
    if metric in LOWER_IS_BETTER:
        return True
    from mlplatform.specs.team_metrics import registered

    team = registered(metric)
    return team is not None and team.lower_is_better
