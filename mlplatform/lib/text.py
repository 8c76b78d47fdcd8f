"""Free-text features (``features.text``): their default encoding, and how their drift is measured.

Encoding: TF-IDF over the column's words (:func:`text_encoder`), one block of columns per text column, each output
column one word of the vocabulary learnt on the training window; explanations name those words.

Drift: a text column is not a distribution one test can compare directly. Each document is reduced to two numbers
that are independent from document to document, and each gets the numeric drift test like any numeric feature
(:func:`add_text_proxies`):

- ``<column>.words``: its length in words;
- ``<column>.unseen``: the share of its words that no *other* reference document contains (for a reference
  document, its own occurrences are left out: so the reference is judged by the same rule as the week, and a
  reference document is not "seen" merely because it is there). A new topic, product name or language raises it.

Pure: no Dagster.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
"""Words as scikit-learn's TfidfVectorizer finds them (two or more word characters), lowercased."""
MAX_WORDS = 1000
"""Vocabulary per text column: the most frequent words of the training window (the rest are ignored)."""
TEXT_TRANSFORMER_PREFIX = "text:"
"""Name of a text column's block in the preprocessing step: ``text:<column>`` (explanations read it)."""
WORDS_SUFFIX = ".words"
UNSEEN_SUFFIX = ".unseen"
_TOKENS = re.compile(TOKEN_PATTERN)


def documents(x: Any) -> np.ndarray:
    """A text column (a Series, a one-column frame, an array) as a 1-D array of texts; missing as ''."""
    values = x.iloc[:, 0] if isinstance(x, pd.DataFrame) else x
    values = np.asarray(values, dtype=object).reshape(-1)
    return np.array(["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in values], dtype=object)


def text_encoder(max_words: int = MAX_WORDS) -> Any:
    """The default encoding of one text column: missing as empty text, then TF-IDF (sublinear counts, words seen in
    at least one training document, at most ``max_words``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    return Pipeline([
        ("documents", FunctionTransformer(documents, validate=False)),
        ("tfidf", TfidfVectorizer(token_pattern=TOKEN_PATTERN, lowercase=True, sublinear_tf=True,
                                  max_features=max_words, dtype=np.float64)),
    ])


def words(text: str | None) -> list[str]:
    return _TOKENS.findall(text.lower()) if isinstance(text, str) else []


def _document_frequency(texts: Iterable[str | None]) -> Counter:
    frequency: Counter = Counter()
    for text in texts:
        frequency.update(set(words(text)))
    return frequency


def _proxies(texts: Iterable[str | None], frequency: Counter, own: bool) -> tuple[list[float], list[float]]:
    """Words and unseen share per document. A document without words has an unseen share of NaN (not compared).
    ``own``: the documents are the reference itself, so each one's own occurrence of a word is not counted."""
    lengths, unseen = [], []
    for text in texts:
        found = words(text)
        lengths.append(float(len(found)))
        if not found:
            unseen.append(np.nan)
            continue
        known = {w for w in set(found) if frequency[w] - (1 if own else 0) >= 1}
        unseen.append(sum(1 for w in found if w not in known) / len(found))
    return lengths, unseen


def proxy_columns(text_columns: Sequence[str]) -> list[str]:
    """The numeric columns drift compares for the text columns."""
    return [f"{c}{suffix}" for c in text_columns for suffix in (WORDS_SUFFIX, UNSEEN_SUFFIX)]


def add_reference_proxies(frame: pd.DataFrame, text_columns: Sequence[str]) -> tuple[pd.DataFrame, dict[str, Counter]]:
    """The reference with :func:`proxy_columns` added (leave-one-out), and each column's document frequencies."""
    frame, vocabularies = frame.copy(), {}
    for column in text_columns:
        texts = frame[column] if column in frame.columns else pd.Series([None] * len(frame), index=frame.index)
        vocabularies[column] = _document_frequency(texts)
        frame[column + WORDS_SUFFIX], frame[column + UNSEEN_SUFFIX] = _proxies(texts, vocabularies[column], True)
    return frame, vocabularies


def add_current_proxies(frame: pd.DataFrame, text_columns: Sequence[str],
                        vocabularies: dict[str, Counter]) -> pd.DataFrame:
    """A week's rows with :func:`proxy_columns` added, words judged against the reference's vocabulary."""
    frame = frame.copy()
    for column in text_columns:
        if column in frame.columns:
            frame[column + WORDS_SUFFIX], frame[column + UNSEEN_SUFFIX] = _proxies(
                frame[column], vocabularies.get(column, Counter()), False)
    return frame
