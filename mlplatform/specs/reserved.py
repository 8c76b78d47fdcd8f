"""Names a model may not take, and schemas a spec may not read labels from.

A model's name becomes its warehouse schema (``<name>.raw``, ``<name>.features``, ...) and the prefix
of its asset keys. A SQL keyword there breaks statements that name the schema without quotes (dbt's,
a user's own queries); a system schema or catalog name makes names ambiguous or fails; and the
platform's own schema (``audit``) would put a model's tables beside the hash-chained audit trail.
The lists are static so validating a spec does not import DuckDB; a test compares them with
``duckdb_keywords()`` of the installed DuckDB.
"""

from __future__ import annotations

from mlplatform import names

SQL_KEYWORDS = frozenset("""
all analyse analyze and any array as asc asymmetric both case cast check collate column constraint create default
deferrable desc describe distinct do else end except false fetch for foreign from group having in initially intersect
into lambda lateral leading limit not null offset on only or order pivot pivot_longer pivot_wider placing primary
qualify references returning select show some summarize symmetric table then to trailing true union unique unpivot
using variadic when where window with
anti asof at authorization binary by collation concurrently cross freeze full glob ilike inner is isnull join left
like natural notnull outer overlaps positional right semi similar tablesample unpack verbose
""".split())
"""DuckDB's keywords that cannot name a schema without quotes: all ``reserved`` ones and 30 ``type_function`` ones."""

WAREHOUSE_CATALOG = "warehouse"
"""The catalog name DuckDB gives the warehouse file (``warehouse.duckdb``): a schema of that name is ambiguous."""

SYSTEM_SCHEMAS = frozenset({"information_schema", "pg_catalog", "main", "temp", "system", "memory",
                            WAREHOUSE_CATALOG})
"""DuckDB's own schemas and catalogs (``main`` is where unqualified names and dbt's default models go)."""

SYSTEM_PREFIXES = ("pg_", "duckdb_", "sqlite_")

PLATFORM_SCHEMAS = frozenset({names.AUDIT_SCHEMA})
"""The platform's own warehouse schemas (the audit trail)."""


def reserved_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a model's name (its warehouse schema), or None when it can."""
    lowered = name.lower()
    if lowered in SQL_KEYWORDS:
        why = "a SQL keyword"
    elif lowered in SYSTEM_SCHEMAS or lowered.startswith(SYSTEM_PREFIXES):
        why = "a schema or catalog name the database keeps for itself"
    elif lowered in PLATFORM_SCHEMAS:
        why = "the platform's own schema (the audit trail)"
    else:
        return None
    return (f"found {name!r}, {why}; a model's name becomes its warehouse schema, so it may not be a SQL keyword "
            f"or one of {', '.join(sorted(SYSTEM_SCHEMAS | PLATFORM_SCHEMAS))} (or start with "
            f"{', '.join(SYSTEM_PREFIXES)}): choose another, e.g. {name}_model")


def labels_table_problem(table: str, model: str, other_models: set[str] | frozenset[str] = frozenset(),
                         what: str = "labels") -> str | None:
    """Why ``labels.table`` (``schema.table``) may not be read for ``model``, or None when it may (``what``: what
    the table holds, for the message: also ``scoring.table``'s rows to score).

    Outcomes come from the model's own schema or a schema no model owns (``main``, where dbt builds by default,
    included); never from another model's tables, the platform's audit trail or the database's catalogs.
    """
    schema = table.partition(".")[0].lower()
    if schema == model.lower():
        return None
    if schema in {m.lower() for m in other_models}:
        return (f"found {table!r}, a table of model {schema!r}; a model's {what} may not come from another model's "
                f"schema: build the {what} into {model}.<table> or a schema of their own")
    if schema in PLATFORM_SCHEMAS:
        return (f"found {table!r}, in the platform's own schema {schema!r} (the audit trail); name a table of "
                f"{model}'s schema or a schema of its own")
    if schema != "main" and (schema in SYSTEM_SCHEMAS or schema.startswith(SYSTEM_PREFIXES)):
        return (f"found {table!r}, in the database's own schema {schema!r}; name a table of {model}'s schema or a "
                "schema of its own")
    return None
