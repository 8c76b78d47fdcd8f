"""GENERATED support tickets: a multiclass topic decided by the words of a free-text message, not a real dataset.

No package on the index this project installs from ships a support-ticket corpus (nltk's corpora are a separate
download), so the ticket classifier example (``examples/support_tickets``, written by
``scripts/make_support_tickets.py``) and the text-feature tests use these, called generated wherever they appear.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TOPIC_WORDS = {
    "billing": ["invoice", "refund", "charged", "payment", "card", "twice", "bill"],
    "technical": ["error", "crash", "login", "app", "loading", "bug", "screen"],
    "account": ["password", "email", "username", "delete", "profile", "address", "reset"],
}
COMMON = ["please", "help", "hello", "thanks", "my", "the", "is", "not", "since", "yesterday", "urgent"]
NEW_PRODUCT = ["zephyr", "quasar", "nimbus", "orbit", "vortex"]  # words no earlier ticket contains


def generated_tickets(weeks: int = 4, per_week: int = 60, seed: int = 0, new_product_from_week: int | None = None
                      ) -> pd.DataFrame:
    """GENERATED tickets: each message mixes 2-4 words of its topic with common words; from
    ``new_product_from_week`` on, messages also name products no earlier ticket mentions."""
    rng = np.random.default_rng(seed)
    rows = []
    topics = list(TOPIC_WORDS)
    for i in range(weeks * per_week):
        week = i // per_week
        topic = topics[rng.integers(len(topics))]
        chosen = list(rng.choice(TOPIC_WORDS[topic], rng.integers(2, 5))) + list(rng.choice(COMMON, 4))
        if new_product_from_week is not None and week >= new_product_from_week:
            chosen += list(rng.choice(NEW_PRODUCT, 3))
        rng.shuffle(chosen)
        rows.append({"id": i, "ts": pd.Timestamp("2024-01-01") + pd.Timedelta(hours=int(i * 168 / per_week)),
                     "message": " ".join(chosen), "tenure_months": float(rng.integers(1, 60)), "topic": topic})
    frame = pd.DataFrame(rows)
    frame.loc[5, "message"] = None  # a ticket without text
    frame["ts"] = frame["ts"].dt.strftime("%Y-%m-%d %H:%M:%S")
    return frame
