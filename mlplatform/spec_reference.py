"""The spec reference, generated from the pydantic model so the docs cannot drift from the code.

``mlplatform spec-reference`` rewrites ``docs/spec-reference.md``; a test fails when the
checked-in file differs from what the code would write.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mlplatform.lib.settings import REPO_DIR
from mlplatform.specs import ModelSpec

REFERENCE_PATH = REPO_DIR / "docs" / "spec-reference.md"

HEADER = """# Model spec reference

<!-- Generated from mlplatform/specs/schema.py by `python3 dev.py spec-reference`; do not edit by hand. -->

One YAML file per model in the folder `MLPLATFORM_SPECS` points at (default: the bundled
`mlplatform/examples`), or in its team folders (`<root>/<team>/*.yaml`; several roots separated by `:`,
docs/teams.md). Unknown keys are errors; `python3 dev.py validate` lists every
problem with its file, key, what was found and what is allowed.

| key | type | default | meaning |
| --- | --- | --- | --- |
"""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    args = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        names = " \\| ".join(_type_name(a) for a in args if a is not type(None))
        return names + (" (optional)" if type(None) in args else "")
    if origin is list:
        return f"list of {' or '.join(_type_name(a) for a in get_args(annotation)) if get_args(annotation) else 'values'}"
    if origin is dict:
        key, value = get_args(annotation)
        return f"map {_type_name(key)} -> {_type_name(value)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(its keys)"
        return f"`{json.dumps(value)}`"
    if field.default is PydanticUndefined or field.default is None:
        return "none"
    return f"`{json.dumps(field.default, default=str)}`"


MAP_KEY_NAMES = {"metrics": "name"}
"""What the keys of a mapping section are, where they are not column names."""


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = f"{prefix}{field.alias or name}"
        nested = _models_in(field.annotation)
        is_map = get_origin(field.annotation) is dict
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
        if is_map:
            value_models = _models_in(get_args(field.annotation)[1])
            for value_model in value_models:
                rows += _rows(value_model, f"{key}.<{MAP_KEY_NAMES.get(key, 'column')}>.")
        for nested_model in nested:
            rows += _rows(nested_model, f"{key}.")
    return rows


def render() -> str:
    """The whole reference as markdown, one row per key (nested sections flattened to dotted keys)."""
    return HEADER + "\n".join(_rows(ModelSpec, "")) + "\n"


def write(path: Path = REFERENCE_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    return path
