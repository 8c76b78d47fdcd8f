"""How facts look in the Dagster UI: markdown tables and embedded plots, built one way everywhere."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import pandas as pd
from dagster import MetadataValue

from mlplatform.specs import ModelSpec


def markdown_table(frame: pd.DataFrame) -> str:
    """A markdown table of a frame (pipes in values escaped)."""
    return rows_table(list(frame.columns), list(frame.itertuples(index=False)))


def rows_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table from a header and rows of already formatted values."""
    top = "| " + " | ".join(str(c) for c in header) + " |"
    rule = "| " + " | ".join("---" for _ in header) + " |"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join([top, rule, *body])


def image(png: bytes, title: str) -> str:
    """A PNG embedded in markdown (the UI shows it inline; nothing to host)."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def plot(png: bytes, title: str) -> MetadataValue:
    return MetadataValue.md(image(png, title))


def scalar_or_json(value: Any) -> Any:
    """Numbers and text as themselves, anything else (lists, dicts, booleans) as JSON metadata."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    return MetadataValue.json(value)


def owners(spec: ModelSpec) -> list[str]:
    """The spec's owner as Dagster asset owners (every asset of the model shows the same team)."""
    return [spec.owner] if spec.owner else []
