"""Evidently's own per-column verdicts, to hold our drift statistics against (tests and benchmark only)."""

from __future__ import annotations

import pandas as pd


def evidently_columns(reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str],
                      categorical: list[str]) -> dict[str, tuple[str, float]]:
    """column -> (method, score) from ``Report([DataDriftPreset()])`` on the same frames."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    columns = numerical + categorical
    report = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    found = {}
    for metric in report.dict()["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift"):
            found[config["column"]] = (config["method"], float(metric["value"]))
    return found


def evidently_drifted(method: str, score: float, threshold: float) -> bool:
    """Evidently's decision rules (ks: p <= t; chi-square, Z: p < t; distances: >= t)."""
    if method.startswith("K-S"):
        return score <= threshold
    if method.endswith("p_value"):
        return score < threshold
    return score >= threshold
