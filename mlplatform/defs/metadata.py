"""How facts look in the Dagster UI: markdown tables and embedded plots, built one way everywhere."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pandera.pandas as pa
from dagster import MetadataValue, TableColumn, TableColumnConstraints, TableSchema

from mlplatform.specs import ModelSpec

COLUMN_SCHEMA = "dagster/column_schema"
"""The metadata key the Dagster UI reads an asset's columns from."""


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


TEAM_TAG = "team"
"""The tag every asset of a team's model (and every run of its jobs) carries: the UI filters on it."""


def owners(spec: ModelSpec) -> list[str]:
    """The spec's team and owners as Dagster asset owners (every asset of the model shows the same team):
    ``team:<team>`` first (the Dagster convention for a team), then ``owners`` and ``owner``."""
    team = [f"team:{spec.team_name}"] if spec.team_name else []
    return list(dict.fromkeys([*team, *spec.owners, *([spec.owner] if spec.owner else [])]))


def team_tags(spec: ModelSpec) -> dict[str, str]:
    """``{"team": <team>}`` for a model with a team, else nothing."""
    return {TEAM_TAG: spec.team_name} if spec.team_name else {}


def team_attributes(spec: ModelSpec) -> dict:
    """The team as ``tags`` and ``owners`` of a schedule or sensor (what the UI's automation page filters on);
    nothing for a model without team or owners (``owners`` is beta in Dagster: not passed when empty)."""
    found = owners(spec)
    return {"tags": team_tags(spec), **({"owners": found} if found else {})}


def column_schema(schema: pa.DataFrameSchema) -> TableSchema:
    """A Pandera schema as the UI's column schema (``dagster/column_schema``): names, types, descriptions, rules."""
    from mlplatform.lib.table_schemas import describe_columns

    return TableSchema(columns=[
        TableColumn(name=c["name"], type=c["type"], description=c["description"],
                    constraints=TableColumnConstraints(nullable=c["nullable"], unique=c["unique"], other=c["constraints"]))
        for c in describe_columns(schema)])


def column_schema_metadata(schema: pa.DataFrameSchema) -> dict[str, Any]:
    """The asset metadata that shows ``schema`` as the asset's columns in the UI."""
    return {COLUMN_SCHEMA: column_schema(schema)}
