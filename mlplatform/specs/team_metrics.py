"""A team's own metrics (``metrics:`` in a spec): the function, its direction, and what predictions it reads.

Everywhere the platform judges a model it names the metric (the gates, the champion comparison, the backtest, live
performance, canary and shadow analysis), so a team metric is registered by name for the process once its spec is
loaded (:func:`register_spec_metrics`): :func:`mlplatform.specs.tasks.is_lower_better` and
:func:`mlplatform.lib.metrics.metric_function` find it there. The function comes from an allowed module, as estimator
classes do (:mod:`mlplatform.specs.estimators`); nothing is imported before that check.

The function's contract: ``function(y_true, y_pred) -> float`` on numpy arrays, where ``y_true`` is the target as the
metrics read it (regression: the value; binary: 1.0 for the positive class, the second of the sorted classes, else
0.0; multiclass: the class's index among the sorted classes) and ``y_pred`` is the prediction (regression: the value;
binary: P(positive class) with ``needs_probabilities``, else the decision at ``evaluation.decision_threshold`` as 1.0 /
0.0; multiclass: the predicted class's index).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlplatform.specs.estimators import check_allowed


@dataclass(frozen=True)
class TeamMetric:
    name: str
    dotted: str  # package.module.function
    function: Callable[..., float]
    lower_is_better: bool
    needs_probabilities: bool
    task: str  # what y_pred means follows from it (a binary decision is made at the threshold first)
    model: str  # the spec that defined it last (it may redefine its own metric when reloaded)


_REGISTERED: dict[str, TeamMetric] = {}


class MetricConflict(ValueError):
    """Two specs of one process define the same metric name differently."""


def registered(name: str) -> TeamMetric | None:
    """The team metric registered under ``name`` in this process, or None (a built-in metric, or unknown)."""
    return _REGISTERED.get(name)


def import_metric(dotted: str, spec_folder: Path | None = None) -> Callable[..., float]:
    """The metric function, after :func:`~mlplatform.specs.estimators.check_allowed` (raises its refusal, or
    ValueError naming what is missing)."""
    check_allowed(dotted, spec_folder)
    module_name, _, function_name = dotted.rpartition(".")
    function = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(function):
        raise ValueError(f"found {dotted!r}; {module_name} has no function {function_name!r}")
    return function


def register_spec_metrics(spec: Any) -> list[TeamMetric]:
    """Import and register every metric of the spec's ``metrics`` section (idempotent: a worker process that received
    the spec registers them again; a reloaded spec may redefine its own). :class:`MetricConflict` when another
    model's spec gave the name another function, direction or task.
    ``spec`` is a :class:`~mlplatform.specs.ModelSpec` (not imported here: the schema imports this module's users)."""
    folder = spec.spec_file.parent if spec.spec_file.is_file() else None
    found = []
    for name, declared in spec.metrics.items():
        metric = TeamMetric(name, declared.function, import_metric(declared.function, folder),
                            not declared.greater_is_better, declared.needs_probabilities, spec.task, spec.name)
        known = _REGISTERED.get(name)
        if known is not None and known.model != metric.model and (
                known.dotted, known.lower_is_better, known.needs_probabilities, known.task) != (
                metric.dotted, metric.lower_is_better, metric.needs_probabilities, metric.task):
            raise MetricConflict(f"metric {name!r} is already defined as {known.dotted} (greater_is_better: "
                                 f"{not known.lower_is_better}, needs_probabilities: {known.needs_probabilities}, task "
                                 f"{known.task}) by another spec of this process; give this one another name")
        _REGISTERED[name] = metric
        found.append(metric)
    return found
