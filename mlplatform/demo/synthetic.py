"""A synthetic subscription-churn dataset whose outcome rule can change while its inputs keep their distribution.

Concept drift in its plainest form: every week draws the inputs from the same distribution, and the week's
``rule`` decides how the outcome follows from them. Under rule ``"A"`` customers with many support calls, short
tenure and a month-to-month contract leave; under rule ``"B"`` the effects are reversed (a competitor wins the
long-standing heavy users). An input-drift check cannot see the change; only outcomes can. Used by the demo's
bundled ``churn_shift`` example (``scripts/make_churn_shift.py`` writes it) and by the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

CONTRACTS = ["month-to-month", "one-year", "two-year"]
CONTRACT_SHARES = [0.55, 0.25, 0.20]
RULES = ("A", "B")


def _effects(frame: pd.DataFrame) -> np.ndarray:
    """The centred input effects on the log-odds of leaving under rule A (rule B negates them)."""
    return (0.55 * (frame["support_calls"] - 1.5)
            - 0.045 * (frame["tenure_months"] - 36.5)
            + 0.02 * (frame["monthly_charges"] - 70.0)
            + 1.1 * ((frame["contract"] == "month-to-month").astype(float) - 0.55)
            - 0.04 * (frame["usage_hours"] - 20.0)).to_numpy()


def churn_weeks(start: date, rules: Sequence[str], rows_per_week: int = 400, seed: int = 7) -> pd.DataFrame:
    """One block of ``rows_per_week`` customers per week from the Monday ``start``, week i's outcome by ``rules[i]``."""
    if start.weekday() != 0:
        raise ValueError(f"start {start} is not a Monday")
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        raise ValueError(f"unknown rules {unknown}; allowed: {', '.join(RULES)}")
    rng = np.random.default_rng(seed)
    weeks = []
    for index, rule in enumerate(rules):
        n = rows_per_week
        week_start = datetime.combine(start + timedelta(weeks=index), datetime.min.time())
        frame = pd.DataFrame({
            "signup_time": [week_start + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 7 * 86400, n))],
            "tenure_months": rng.integers(1, 73, n),
            "monthly_charges": np.round(np.clip(rng.normal(70, 25, n), 20, 150), 2),
            "support_calls": rng.poisson(1.5, n),
            "usage_hours": np.round(rng.gamma(4.0, 5.0, n), 1),
            "contract": rng.choice(CONTRACTS, n, p=CONTRACT_SHARES),
        })
        effects = _effects(frame) * (1.0 if rule == "A" else -1.0)
        probability = 1.0 / (1.0 + np.exp(-(-0.9 + 1.6 * effects)))
        frame["churned"] = (rng.random(n) < probability).astype(int)
        weeks.append(frame)
    data = pd.concat(weeks, ignore_index=True)
    data["signup_time"] = data["signup_time"].dt.strftime("%Y-%m-%d %H:%M:%S")
    return data
