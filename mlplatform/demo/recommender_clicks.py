"""GENERATED recommender impressions and clicks (not real data), for the click-through-rate canary example.

Each impression is one item shown to one user: the user's affinity to the item's category, the item's popularity,
the slot it is shown in, and its category. Whether it is clicked follows a known logistic model of those, so a
model trained on the impressions learns it. Live, :func:`simulated_clicks` decides the clicks of the impressions
the service answered: a recommendation whose score misjudges the user's real interest (off by more than
``tolerance``) is clicked less often (``miss_factor`` of the real click probability). So a canary that recommends
worse gets a lower click-through rate: what the canary analysis's business signal judges.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CATEGORIES = ("news", "sport", "music", "film")


def click_probability(frame: pd.DataFrame) -> np.ndarray:
    """The real click probability of each impression (the generator's own model)."""
    logit = (-2.2 + 2.4 * frame["user_affinity"] + 1.2 * frame["item_popularity"] - 0.35 * frame["position"]
             + frame["category"].map({"news": 0.0, "sport": 0.3, "music": 0.5, "film": -0.2}).to_numpy())
    return 1 / (1 + np.exp(-logit.to_numpy("float64")))


def generated_impressions(weeks: int = 6, per_week: int = 400, seed: int = 11, first_id: int = 0,
                          start: str = "2024-01-01") -> pd.DataFrame:
    """Impressions with their click (``clicked`` 0/1), a row every few minutes from ``start``."""
    rng = np.random.default_rng(seed)
    n = weeks * per_week
    ts = pd.Timestamp(start) + pd.to_timedelta(np.arange(n) * (7 * 24 * 3600 / per_week), unit="s")
    frame = pd.DataFrame({
        "impression_id": np.arange(first_id, first_id + n),
        "ts": ts.strftime("%Y-%m-%d %H:%M:%S"),
        "user_affinity": rng.uniform(0, 1, n).round(3),
        "item_popularity": rng.uniform(0, 1, n).round(3),
        "position": rng.integers(1, 6, n),
        "category": rng.choice(CATEGORIES, n),
    })
    frame["clicked"] = (rng.random(n) < click_probability(frame)).astype(int)
    return frame


def simulated_clicks(impressions: pd.DataFrame, served_scores: np.ndarray, seed: int = 0, tolerance: float = 0.15,
                     miss_factor: float = 0.3) -> np.ndarray:
    """0/1 clicks of impressions answered with ``served_scores`` (the served P(click)): a recommendation whose
    score is within ``tolerance`` of the real probability is clicked with that probability, others with
    ``miss_factor`` of it."""
    rng = np.random.default_rng(seed)
    real = click_probability(impressions)
    chance = np.where(np.abs(np.asarray(served_scores, "float64") - real) <= tolerance, real, real * miss_factor)
    return (rng.random(len(impressions)) < chance).astype(int)
