"""The request schema of a model, generated from its spec: feature types, min/max, categories, nullability.

Records are checked by hand rather than through a pydantic model per request: it is several times cheaper on the
1-row path, and every problem can say exactly which record and field, what was found and what is allowed.
Values come out in the form the model was trained on (``split_xy``): numbers as float, categories as text
(``category_text``: ``true`` -> ``"True"``, ``1.0`` -> ``"1"``), nulls as None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mlplatform.lib.validation import category_text
from mlplatform.specs import ModelSpec

RECORD_ID_FIELD = "_id"
"""Optional field of a record: the client's id for it, logged and echoed (replay sends the source row number)."""

MAX_RECORD_ID_CHARS = 200
MAX_KEY_CHARS = 200
"""Longest value of an entity key column (as text): keys are echoed, logged and hashed for the canary."""
MAX_FOUND_CHARS = 80
MAX_PROBLEMS = 50


@dataclass(frozen=True)
class FieldRule:
    """What one feature accepts."""

    name: str
    kind: str  # "numeric" | "categorical" | "text"
    nullable: bool
    minimum: float | None = None
    maximum: float | None = None
    categories: frozenset[str] | None = None
    max_chars: int | None = None  # text: the longest accepted (features.text_max_chars)

    def allowed(self) -> str:
        if self.kind == "numeric":
            text = "a number"
            if self.minimum is not None and self.maximum is not None:
                text += f" between {_number(self.minimum)} and {_number(self.maximum)}"
            elif self.minimum is not None:
                text += f" >= {_number(self.minimum)}"
            elif self.maximum is not None:
                text += f" <= {_number(self.maximum)}"
        elif self.kind == "text":
            text = f"a text of at most {self.max_chars} characters"
        elif self.categories is not None:
            text = "one of " + ", ".join(repr(c) for c in sorted(self.categories))
        else:
            text = "a text, number or boolean (compared as text)"
        return text + (" or null" if self.nullable else "")

    def json_schema(self) -> dict[str, Any]:
        if self.kind == "numeric":
            schema: dict[str, Any] = {"type": ["number", "null"] if self.nullable else "number"}
            if self.minimum is not None:
                schema["minimum"] = self.minimum
            if self.maximum is not None:
                schema["maximum"] = self.maximum
        elif self.kind == "text":
            schema = {"type": ["string", "null"] if self.nullable else "string", "maxLength": self.max_chars}
        else:
            schema = {"type": ["string", "number", "boolean", "null"] if self.nullable
                      else ["string", "number", "boolean"]}
            if self.categories is not None:
                schema["enum"] = sorted(self.categories) + ([None] if self.nullable else [])
                schema["description"] = "compared as text: true is 'True', 1.0 is '1'"
        return schema


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _shown(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= MAX_FOUND_CHARS else text[: MAX_FOUND_CHARS - 3] + "..."


class RecordProblems(ValueError):
    """Every problem found in a request's records (the 422 answer)."""

    def __init__(self, problems: list[dict[str, Any]]):
        self.problems = problems
        super().__init__("; ".join(p["message"] for p in problems[:5]))


class RecordSchema:
    """Checks and normalises records for one model spec."""

    def __init__(self, spec: ModelSpec):
        self.model = spec.name
        self.key_columns = list(spec.source.key)
        self.rules: list[FieldRule] = []
        for kind in ("numeric", "categorical", "text"):
            for name in getattr(spec.features, kind):
                rules = spec.columns.get(name)
                nullable = True if rules is None or rules.nullable is None else rules.nullable
                categories = None
                if rules is not None and rules.categories is not None and kind == "categorical":
                    categories = frozenset(category_text(c) for c in rules.categories)
                self.rules.append(FieldRule(
                    name=name, kind=kind, nullable=nullable,
                    minimum=rules.min if rules is not None and kind == "numeric" else None,
                    maximum=rules.max if rules is not None and kind == "numeric" else None,
                    categories=categories,
                    max_chars=spec.features.text_max_chars if kind == "text" else None,
                ))
        self.feature_names = [rule.name for rule in self.rules]
        # The spec's sensitive attributes may ride along with a record: logged for live fairness, never model inputs.
        self.sensitive_columns = list(spec.fairness.sensitive) if spec.fairness else []
        used = sorted(set(self.sensitive_columns) & set(self.feature_names))
        if used:  # the loader refuses such a spec; this guards the serving path whatever built the spec
            raise ValueError(f"{spec.name}: sensitive column(s) {', '.join(used)} are features; a sensitive attribute "
                             "is never a model input (fairness.sensitive, features)")

    def check(self, records: list[Any]) -> list[dict[str, Any]]:
        """The records as model inputs (feature -> float/text/None), or raise :class:`RecordProblems`."""
        problems: list[dict[str, Any]] = []
        checked = []
        for index, record in enumerate(records):
            checked.append(self._check_one(index, record, problems))
            if len(problems) >= MAX_PROBLEMS:
                break
        if problems:
            raise RecordProblems(problems[:MAX_PROBLEMS])
        return checked

    def extras(self, record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """The entity key columns present in a (checked) record, and the client's record id."""
        key = {c: record[c] for c in self.key_columns if c in record} or None
        record_id = record.get(RECORD_ID_FIELD)
        return key, (None if record_id is None else str(record_id))

    def sensitive(self, record: dict[str, Any]) -> dict[str, str | None] | None:
        """The spec's sensitive attributes a (checked) record carries, as text (``category_text``: 1.0 is "1");
        None when the spec has none or the record sends none. Never part of what the model scores."""
        if not self.sensitive_columns:
            return None
        found = {c: (None if record.get(c) is None else category_text(record[c]))
                 for c in self.sensitive_columns if c in record}
        return found or None

    def _check_one(self, index: int, record: Any, problems: list[dict[str, Any]]) -> dict[str, Any]:
        if not isinstance(record, dict):
            problems.append(_problem(index, None, record, "a JSON object of feature -> value",
                                     f"record {index} is not a JSON object"))
            return {}
        values: dict[str, Any] = {}
        for rule in self.rules:
            if rule.name not in record:
                problems.append(_problem(index, rule.name, None, rule.allowed(),
                                         f"record {index}: field {rule.name!r} is missing (send null when unknown"
                                         f"{'' if rule.nullable else ', if allowed'}); allowed: {rule.allowed()}",
                                         found_text="(missing)"))
                continue
            value, message = _normalise(rule, record[rule.name])
            if message is not None:
                problems.append(_problem(index, rule.name, record[rule.name], rule.allowed(),
                                         f"record {index}: field {rule.name!r} {message}; found "
                                         f"{_shown(record[rule.name])}; allowed: {rule.allowed()}"))
            values[rule.name] = value
        for column in self.key_columns:
            if column in record and not _short_scalar(record[column], MAX_KEY_CHARS):
                problems.append(_problem(index, column, record[column],
                                         f"a text or number of at most {MAX_KEY_CHARS} characters",
                                         f"record {index}: key {column!r} must be a text or number of at most "
                                         f"{MAX_KEY_CHARS} characters; found {_shown(record[column])}"))
        for column in self.sensitive_columns:
            value = record.get(column)
            if value is not None and not _short_scalar(value, MAX_KEY_CHARS):
                problems.append(_problem(index, column, value, f"a text or number of at most {MAX_KEY_CHARS} "
                                         "characters, or null",
                                         f"record {index}: sensitive attribute {column!r} must be a text, number or "
                                         f"boolean of at most {MAX_KEY_CHARS} characters, or null; found {_shown(value)}"))
        record_id = record.get(RECORD_ID_FIELD)
        if record_id is not None and not _short_scalar(record_id, MAX_RECORD_ID_CHARS):
            problems.append(_problem(index, RECORD_ID_FIELD, record_id, f"a text or number of at most "
                                     f"{MAX_RECORD_ID_CHARS} characters",
                                     f"record {index}: {RECORD_ID_FIELD!r} must be a short text or number; found "
                                     f"{_shown(record_id)}"))
        return values

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of one record (shown in /v1/models and the OpenAPI document)."""
        properties = {rule.name: rule.json_schema() for rule in self.rules}
        for column in self.key_columns:
            properties.setdefault(column, {"type": ["string", "number"], "maxLength": MAX_KEY_CHARS,
                                           "description": "entity key (echoed)"})
        for column in self.sensitive_columns:
            properties.setdefault(column, {"type": ["string", "number", "null"], "maxLength": MAX_KEY_CHARS,
                                           "description": "sensitive attribute (fairness.sensitive): optional, "
                                           "logged for live fairness, never a model input"})
        properties[RECORD_ID_FIELD] = {"type": ["string", "number"], "maxLength": MAX_RECORD_ID_CHARS,
                                       "description": "optional client id of the record (logged and echoed)"}
        return {"title": f"{self.model} record", "type": "object", "properties": properties,
                "required": list(self.feature_names)}


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not (isinstance(value, float) and not math.isfinite(value))


def _short_scalar(value: Any, max_chars: int) -> bool:
    """A text or finite number of at most ``max_chars`` characters written out (a key or a record id)."""
    if not _is_scalar(value):
        return False
    if isinstance(value, str):
        return len(value) <= max_chars
    try:
        return len(str(value)) <= max_chars
    except ValueError:  # an integer too long to write as text
        return False


def _normalise(rule: FieldRule, value: Any) -> tuple[Any, str | None]:
    """(model input value, None) or (None, what is wrong)."""
    if value is None:
        return None, (None if rule.nullable else "must not be null")
    if rule.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, "must be a number"
        try:
            number = float(value)
        except OverflowError:
            return None, "is out of range"
        if not math.isfinite(number):
            return None, "must be a finite number"
        if rule.minimum is not None and number < rule.minimum:
            return None, f"is below the minimum {_number(rule.minimum)}"
        if rule.maximum is not None and number > rule.maximum:
            return None, f"is above the maximum {_number(rule.maximum)}"
        return number, None
    if rule.kind == "text":
        if not isinstance(value, str):
            return None, "must be a text"
        if rule.max_chars is not None and len(value) > rule.max_chars:
            return None, f"is too long: {len(value)} characters, at most {rule.max_chars} (features.text_max_chars)"
        return value, None
    if not isinstance(value, str | int | float):  # bool is an int
        return None, "must be a text, number or boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return None, "must be a finite number"
    try:
        text = category_text(value)
    except ValueError:  # an integer too long to write as text
        return None, "is too long"
    if rule.categories is not None and text not in rule.categories:
        return None, "is not an allowed category"
    return text, None


def _problem(index: int, field: str | None, found: Any, allowed: str, message: str,
             found_text: str | None = None) -> dict[str, Any]:
    return {"record": index, "field": field, "found": found_text or _shown(found), "allowed": allowed,
            "message": message}
