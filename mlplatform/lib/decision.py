"""The binary decision, defined once: a probability becomes the positive class at the spec's threshold.

Metrics that need a decision (f1), the fairness rates, the label :func:`mlplatform.lib.training.predict` and the
service return, and live performance all decide through :func:`predicted_positive` with the spec's
``evaluation.decision_threshold``. Numpy only, so the service imports it without the metrics' dependencies.
"""

from __future__ import annotations

import numpy as np

from mlplatform.specs.schema import DEFAULT_DECISION_THRESHOLD

DECISION_THRESHOLD = DEFAULT_DECISION_THRESHOLD
"""The default of ``evaluation.decision_threshold``; callers that know the spec pass its value."""


def predicted_positive(score: np.ndarray, threshold: float = DECISION_THRESHOLD) -> np.ndarray:
    """Whether each row is predicted as the positive (second) class: its probability is at least ``threshold``."""
    return np.asarray(score) >= threshold
