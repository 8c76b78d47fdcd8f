"""Loading spec files: YAML -> :class:`ModelSpec`, plus the checks that need more than the YAML.

A bad spec must stop the code location from loading with one line per problem
naming the file, the key, what was found and what is allowed, so a user fixes
every mistake in one pass instead of one per reload.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from mlplatform.specs.estimators import EstimatorNotAllowed, check_allowed
from mlplatform.specs.files import SourceFileError, checked_data_path, sample_column, source_columns
from mlplatform.specs.folder_code import shadowing_modules
from mlplatform.specs.policies import (
    POLICIES_FILE,
    PolicyFileError,
    load_policies,
    policies_path,
    policy_problems,
    resolve_policy,
)
from mlplatform.specs.reserved import labels_table_problem
from mlplatform.specs.schema import ModelSpec, SpecError, SpecProblem, _suggest, check_column_name
from mlplatform.specs.team_metrics import MetricConflict, import_metric, register_spec_metrics
from mlplatform.specs.teams import (
    SpecLoad,
    SpecRoots,
    as_roots,
    declared_team,
    folder_team_problem,
    team_folders,
    team_mismatch,
    yaml_files,
)
from mlplatform.specs.timestamps import SAMPLE_VALUES, checked_event_times, parse_event_times

DbtColumns = Callable[[str], list[str] | None]
"""Looks up the declared columns of a dbt model by name; None when there is no such model. It may raise
:class:`DbtProjectUnavailable` when there is no dbt project to look in (reported against ``staging.dbt_model``)."""


class DbtProjectUnavailable(ValueError):
    """A spec stages through dbt, but the configured dbt project is missing; the message names the fix."""


def load_specs(folder: SpecRoots, dbt_model_columns: DbtColumns | None = None, check_data: bool = True
               ) -> list[ModelSpec]:
    """Load and validate every spec in ``folder`` (one spec root or several; see :func:`load_spec_set`); raise
    :class:`SpecError` listing all problems: the strict load, for ``mlplatform validate``, the CLI and
    ``MLPLATFORM_STRICT_SPECS=1``.

    ``check_data=False`` checks the YAML against the schema (and names, labels tables, code beside the specs) but
    opens no data file, imports no estimator and reads no dbt project: a serving replica has none of the training
    data on its disk; ``mlplatform validate`` and the code location run the data checks."""
    loaded = load_spec_set(folder, dbt_model_columns, check_data)
    if loaded.problems:
        raise SpecError(loaded.problems)
    return loaded.specs


class UnknownModels(ValueError):
    """Model names no valid spec declares (``unknown``), and the models there are (``known``)."""

    def __init__(self, unknown: list[str], known: list[str]):
        super().__init__(f"no model spec named {', '.join(map(repr, unknown))}; specs: {', '.join(known) or 'none'}")
        self.unknown, self.known = unknown, known


def load_usable_specs(folder: SpecRoots, names: Iterable[str] | None = None,
                      dbt_model_columns: DbtColumns | None = None, check_data: bool = True
                      ) -> tuple[list[ModelSpec], list[SpecProblem]]:
    """The valid specs (those named, or all) and the problems of the broken files left out: what ``serve`` and the
    CLI commands load, so one team's broken spec does not stop the other teams' models (``validate`` stays strict).

    Raises :class:`SpecError` for platform-wide problems (:attr:`SpecLoad.fatal`) and when a named model's own spec
    file is broken (its problems only); ValueError for a name no spec declares."""
    loaded = load_spec_set(folder, dbt_model_columns, check_data)
    if loaded.fatal:
        raise SpecError(loaded.problems)
    wanted = list(dict.fromkeys(names or []))
    if wanted:
        broken_files = [file for file in loaded.broken if _name_in_file(file) in wanted]
        targeted = [problem for file in broken_files for problem in loaded.broken[file]]
        if targeted:
            raise SpecError(targeted)
        by_name = {spec.name: spec for spec in loaded.specs}
        unknown = [name for name in wanted if name not in by_name]
        if unknown:
            raise UnknownModels(unknown, sorted(by_name))
        return [by_name[name] for name in wanted], [p for problems in loaded.broken.values() for p in problems]
    return loaded.specs, [problem for problems in loaded.broken.values() for problem in problems]


def skipped_specs_warning(problems: list[SpecProblem]) -> str | None:
    """The warning a command prints when it left broken spec files out (None when nothing was left out)."""
    if not problems:
        return None
    files = list(dict.fromkeys(problem.file for problem in problems))
    return (f"mlplatform: warning: {len(files)} broken spec file(s) left out (their models are not loaded; the "
            "others are): fix each problem below, `mlplatform validate` checks them all:\n"
            + "\n".join(f"  - {problem}" for problem in problems))


def _name_in_file(file: Path) -> str | None:
    """The ``name`` a spec file declares, read without checking anything (None when it does not parse)."""
    try:
        named = (spec_mapping(yaml.safe_load(file.read_text(encoding="utf-8"))) or {}).get("name")
    except (yaml.YAMLError, OSError, UnicodeDecodeError, AttributeError):
        return None
    return named if isinstance(named, str) else None


def load_spec_set(folder: SpecRoots, dbt_model_columns: DbtColumns | None = None, check_data: bool = True
                  ) -> SpecLoad:
    """Every spec of the spec roots, each checked on its own: the valid ones, and the problems per broken file, so
    one team's broken spec does not take the other teams' models down (the code location loads the valid ones).

    A root holds spec files directly (no team, unless the spec names one) and in team folders
    (``<root>/<team>/*.yaml``: the folder's name is the team). Two specs claiming one model name are both refused,
    each naming the other. A missing or empty root, a broken policy file and code beside the specs are
    :attr:`SpecLoad.fatal`: platform-wide, not one team's."""
    loaded = SpecLoad()
    candidates: list[ModelSpec] = []
    for root in as_roots(folder):
        if not root.is_dir():
            loaded.fatal.append(SpecProblem(file=str(root), key="MLPLATFORM_SPECS", message="folder does not exist"))
            continue
        files = spec_files_with_teams(root)
        if not files:
            loaded.fatal.append(SpecProblem(file=str(root), key="MLPLATFORM_SPECS",
                                            message="no *.yaml model specs in this folder"))
            continue
        for path, module in shadowing_modules(root):
            loaded.fatal.append(SpecProblem(file=str(path), key="(code beside the specs)", message=(
                f"a module named {module!r} beside the specs would be imported instead of the real {module} by a "
                f"process started in {root}; code beside a spec is never run: move or rename {path.name}")))
        try:
            policies, default_policy = load_policies(policies_path(root))
        except PolicyFileError as error:
            loaded.fatal.append(SpecProblem(file=str(error.file), key=error.key, message=error.message))
            continue
        for file, folder_team in files:
            spec = _load_one(loaded, file, folder_team, dbt_model_columns, check_data, policies, default_policy)
            if spec is not None:
                candidates.append(spec)
    _refuse_shared_names(loaded, candidates)
    known = {spec.name for spec in candidates}
    for spec in candidates:
        if spec.labels is not None and spec.labels.table is not None:
            problem = labels_table_problem(spec.labels.table, spec.name, known - {spec.name})
            if problem:
                loaded.add(spec.spec_file, "labels.table", problem)
        if spec.scoring.table is not None:
            problem = labels_table_problem(spec.scoring.table, spec.name, known - {spec.name}, "rows to score")
            if problem:
                loaded.add(spec.spec_file, "scoring.table", problem)
    loaded.specs = [spec for spec in candidates if spec.spec_file.resolve() not in loaded.broken]
    return loaded


def _load_one(loaded: SpecLoad, file: Path, folder_team: str | None, dbt_model_columns: DbtColumns | None,
              check_data: bool, policies: dict[str, Any], default_policy: str | None) -> ModelSpec | None:
    """One spec file into ``loaded``: the spec when it parsed (its problems recorded either way), else None."""
    resolved = file.resolve()
    spec, problems = load_spec_file(file, dbt_model_columns, check_data)
    loaded.teams[resolved] = folder_team or (spec.team_name if spec is not None else _team_in_file(file))
    for problem in problems:
        loaded.add(file, problem.key, problem.message)
    if folder_team is not None:
        folder_problem = folder_team_problem(file.parent)
        if folder_problem:
            loaded.add(file, "team", folder_problem)
    if spec is None:
        return None
    if folder_team is not None:
        mismatch = team_mismatch(spec, folder_team, file.parent)
        if mismatch:
            loaded.add(file, "team", mismatch)
        spec._folder_team = folder_team
    broken = list(policy_problems(spec, policies, default_policy))
    for key, message in broken:
        loaded.add(file, key, message)
    if not broken:
        spec._policy_rules = resolve_policy(spec, policies, default_policy)
    return spec


def _refuse_shared_names(loaded: SpecLoad, specs: list[ModelSpec]) -> None:
    """A model name claimed by two spec files (two teams, or one team twice): both are refused, each naming the
    other (which one is the real owner is a decision for people, not for the load order)."""
    by_name: dict[str, list[ModelSpec]] = {}
    for spec in specs:
        by_name.setdefault(spec.name, []).append(spec)
    for name, claims in by_name.items():
        if len(claims) < 2:
            continue
        for spec in claims:
            others = [other for other in claims if other is not spec]
            named = ", ".join(f"{other.spec_file}" + (f" (team {other.team_name})" if other.team_name else "")
                              for other in others)
            verb = "is already used by" if spec is not claims[0] else "is claimed again by"
            loaded.add(spec.spec_file, "name", f"model name {name!r} {verb} {named}; names must be unique across "
                       "teams and spec roots: rename one of them")


def _team_in_file(file: Path) -> str | None:
    try:
        return declared_team(spec_mapping(yaml.safe_load(file.read_text(encoding="utf-8"))))
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return None


COMPONENT_TYPE = "mlplatform.ModelLifecycle"
"""The ``type`` of a ``defs.yaml`` whose ``attributes`` are a spec (a team's `dg` project)."""


def spec_files(folder: Path) -> list[Path]:
    """The spec files of a spec root (see :func:`spec_files_with_teams`)."""
    return [file for file, _ in spec_files_with_teams(folder)]


def spec_files_with_teams(folder: Path) -> list[tuple[Path, str | None]]:
    """(file, team folder or None) for every spec file of a spec root: every ``*.yaml``/``*.yml`` directly in it
    (hidden files such as editor locks skipped), then each team folder's (``<root>/<team>/*.yaml``), then each
    ``<component>/defs.yaml`` of type ``mlplatform.ModelLifecycle`` one level down: pointed at a `dg` project's
    ``defs`` folder, the CLI (validate, serve, promote, ...) reads the components' specs."""
    skip = frozenset({POLICIES_FILE})
    found: list[tuple[Path, str | None]] = [(file, None) for file in yaml_files(folder, skip)]
    for team_folder in team_folders(folder, skip):
        found += [(file, team_folder.name) for file in yaml_files(team_folder, skip | {"defs.yaml"})]
    return found + [(f, None) for f in sorted(folder.glob("*/defs.yaml")) if not f.parent.name.startswith(".")
                    and _is_component(f)]


def _is_component(file: Path) -> bool:
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return False  # a defs.yaml of several documents or another kind: not one of ours
    return isinstance(raw, dict) and raw.get("type") == COMPONENT_TYPE


def spec_mapping(raw: Any) -> Any:
    """The spec in a loaded YAML file: the file itself, or a component's ``attributes``."""
    if isinstance(raw, dict) and raw.get("type") == COMPONENT_TYPE and "attributes" in raw:
        return raw["attributes"]
    return raw


def declared_names(folder: SpecRoots) -> dict[str, Path]:
    """The model name each spec file of the spec roots declares, read from its ``name`` key alone (fast: nothing is
    checked; a file that does not parse names nothing here and is reported by :func:`load_specs`)."""
    return {name: file for name, (file, _, _) in _declared(folder).items()}


def _declared(folder: SpecRoots) -> dict[str, tuple[Path, Path, str | None]]:
    """Model name -> (spec file, its spec root, its team folder or None), the first file of each name."""
    found: dict[str, tuple[Path, Path, str | None]] = {}
    for root in as_roots(folder):
        if not root.is_dir():
            continue
        for file, folder_team in spec_files_with_teams(root):
            try:
                named = (spec_mapping(yaml.safe_load(file.read_text(encoding="utf-8"))) or {}).get("name")
            except (yaml.YAMLError, OSError, UnicodeDecodeError, AttributeError):
                continue
            if isinstance(named, str):
                found.setdefault(named, (file, root, folder_team))
    return found


def load_spec_named(folder: SpecRoots, model: str, dbt_model_columns: DbtColumns | None = None) -> ModelSpec:
    """The spec of one model, loaded and checked as :func:`load_specs` checks it, without loading the other specs
    (a broken neighbour must not block this model, and checking every data file costs seconds).

    Raises :class:`SpecError` for that spec's problems, ValueError when no spec in ``folder`` names the model.
    """
    declared = _declared(folder).get(model)
    if declared is None:
        shown = ", ".join(str(root) for root in as_roots(folder))
        raise ValueError(f"no model spec named {model!r} in {shown}")
    file, root, folder_team = declared
    try:
        policies, default_policy = load_policies(policies_path(root))
    except PolicyFileError as error:
        raise SpecError([SpecProblem(file=str(error.file), key=error.key, message=error.message)]) from None
    loaded = SpecLoad()
    spec = _load_one(loaded, file, folder_team, dbt_model_columns, True, policies, default_policy)
    if loaded.problems or spec is None:
        raise SpecError(loaded.problems)
    return spec


def _parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml when PyYAML has it (~30 ms less per spec: a second at 50 specs); a file it
    refuses is parsed again by the pure-Python loader, whose error message (with the line shown) is the one reported."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is None:
        return yaml.safe_load(text)
    try:
        return yaml.load(text, Loader=fast)  # noqa: S506 - CSafeLoader is the safe loader, in C
    except yaml.YAMLError:
        return yaml.safe_load(text)


def load_spec_file(file: Path, dbt_model_columns: DbtColumns | None = None, check_data: bool = True
                   ) -> tuple[ModelSpec | None, list[SpecProblem]]:
    """One spec file: (spec or None, problems); ``check_data=False``: the schema only (see :func:`load_specs`)."""
    try:
        raw = spec_mapping(_parse_yaml(file.read_text(encoding="utf-8")))
    except yaml.YAMLError as error:
        return None, [SpecProblem(file=str(file), key="(yaml)", message=f"not valid YAML: {error}")]
    except UnicodeDecodeError as error:
        return None, [SpecProblem(file=str(file), key="(file)", message=f"not UTF-8 text ({error}); save it as UTF-8")]
    except OSError as error:
        return None, [SpecProblem(file=str(file), key="(file)", message=f"cannot be read: {error}")]
    if not isinstance(raw, dict):
        return None, [SpecProblem(file=str(file), key="(top level)", message="expected a mapping of keys, found "
                                  f"{type(raw).__name__}")]
    try:
        spec = ModelSpec.model_validate({**raw, "spec_file": file.resolve()})
    except ValidationError as error:
        return None, [SpecProblem(file=str(file), key=key, message=message) for key, message in _explain(error)]
    if not check_data:
        return spec, []
    return spec, [SpecProblem(file=str(file), key=key, message=message) for key, message in _check_against_world(spec, dbt_model_columns)]


def _check_against_world(spec: ModelSpec, dbt_model_columns: DbtColumns | None) -> Iterable[tuple[str, str]]:
    """Checks that need more than the YAML: the labels and source files, the dbt project, the estimator class."""
    yield from _check_labels_file(spec)
    yield from _check_source(spec, dbt_model_columns)
    yield from _check_team_metrics(spec)


def _check_team_metrics(spec: ModelSpec) -> Iterable[tuple[str, str]]:
    """Each ``metrics`` function is allowed and importable; then all are registered for this process (the gates,
    backtest and production steps name them)."""
    if not spec.metrics:
        return
    folder = spec.spec_file.parent
    failed = False
    for name, declared in spec.metrics.items():
        try:
            import_metric(declared.function, folder)
        except EstimatorNotAllowed as refused:
            failed = True
            yield f"metrics.{name}.function", str(refused)
        except Exception as error:  # noqa: BLE001 - the team's module may fail any way; its kind and text are its own
            failed = True
            yield f"metrics.{name}.function", (f"found {declared.function!r}; cannot be imported "
                                               f"({type(error).__name__}: {error})")
    if failed:
        return
    try:
        register_spec_metrics(spec)
    except MetricConflict as conflict:
        yield "metrics", str(conflict)


RECORD_ID = "_id"
"""The record id clients send with a request: what a labels file joins on when the spec has no ``source.key``."""


def _check_labels_file(spec: ModelSpec) -> Iterable[tuple[str, str]]:
    """``labels.path`` under the rules of ``source.path`` (a regular, non-empty file inside the spec's folder or a
    data root; nothing of its content quoted), with the columns the outcomes join needs in its header."""
    if spec.labels is None or spec.labels.path is None:
        return
    found = yield from _data_file_header(spec, "labels.path", spec.labels.path, lambda: spec.labels_path)
    if found is None:
        return
    path, available = found
    time_column = spec.labels.timestamp or spec.source.timestamp
    if time_column is None:
        yield "labels.timestamp", ("required when the source has no timestamp: the column of the labels that puts "
                                   "each outcome in its week")
    where = f"labels file {path.name}"
    for column in [c for c in (time_column, spec.target, *(spec.source.key or [RECORD_ID])) if c]:
        if column not in available:
            key = "labels.timestamp" if column == spec.labels.timestamp else "labels.path"
            yield key, _not_a_column(column, available, where) + (
                " (the labels need the event time, the target and "
                + ("the key columns)" if spec.source.key else f"{RECORD_ID!r}, the record id clients sent)"))


def _data_file_header(spec: ModelSpec, key: str, written: str, resolve: Callable[[], Path | None]
                      ) -> Generator[tuple[str, str], None, tuple[Path, list[str]] | None]:
    """A data file named by ``key`` (source.path, labels.path) under the data roots' rules, and its header's
    columns; None after yielding the problem when it cannot be read (one rule for every data file a spec names)."""
    try:
        path = resolve()
    except RuntimeError as error:  # "~user/..." naming a user this machine does not have
        yield key, f"found {written!r}; {error}"
        return None
    assert path is not None
    try:
        path = checked_data_path(path, spec.spec_file.parent)
        return path, source_columns(path)
    except SourceFileError as error:
        yield key, str(error)
    except Exception as error:  # noqa: BLE001 - any other reader error: its kind only, its text may quote the file
        yield key, f"cannot read the header of {path} ({type(error).__name__})"
    return None


def _check_source(spec: ModelSpec, dbt_model_columns: DbtColumns | None) -> Iterable[tuple[str, str]]:
    """The source file's header and event times, the dbt model's columns, the estimator class."""
    found = yield from _data_file_header(spec, "source.path", spec.source.path, lambda: spec.source_path)
    if found is None:
        return
    path, available = found
    if spec.source.timestamp and spec.source.timestamp not in available:
        yield "source.timestamp", _not_a_column(spec.source.timestamp, available, f"source {path.name}")
    elif spec.source.timestamp:
        yield from _check_event_times(spec, path)
    for key_column in spec.source.key:
        if key_column not in available:
            yield "source.key", _not_a_column(key_column, available, f"source {path.name}")
    modelling_columns, where = available, f"source {path.name}"
    if spec.staging is not None:
        try:
            staged = dbt_model_columns(spec.staging.dbt_model) if dbt_model_columns else None
        except DbtProjectUnavailable as missing:
            yield "staging.dbt_model", str(missing)
            return
        if staged is None:
            yield "staging.dbt_model", (f"no dbt model named {spec.staging.dbt_model!r} in the dbt project (the folder "
                                        "MLPLATFORM_DBT_PROJECT_DIR names; default: the bundled dbt_project/)")
            return
        modelling_columns, where = staged, f"dbt model {spec.staging.dbt_model} (columns declared in its schema .yml)"
    if spec.target not in modelling_columns:
        yield "target", _not_a_column(spec.target, modelling_columns, where)
    for kind in ("numeric", "categorical"):
        for column in getattr(spec.features, kind):
            if column not in modelling_columns:
                yield f"features.{kind}", _not_a_column(column, modelling_columns, where)
    if spec.target in spec.feature_columns:
        yield "features", f"target {spec.target!r} is also listed as a feature; remove it from features"
    if spec.fairness is not None:
        yield from _check_fairness(spec, modelling_columns, where)
    for column, rules in spec.columns.items():
        if column not in spec.modelling_columns:
            yield f"columns.{column}", (
                f"rules for {column!r}, which is not a target, feature, key or sensitive column of this spec"
                + _suggest(column, spec.modelling_columns)
            )
        if rules.min is not None and rules.max is not None and rules.min > rules.max:
            yield f"columns.{column}", f"min {rules.min} is greater than max {rules.max}"
    yield from _check_estimator(spec)


def _check_fairness(spec: ModelSpec, modelling_columns: list[str], where: str) -> Iterable[tuple[str, str]]:
    """Sensitive columns exist, stay out of the features and are not the target; equalized odds needs two classes."""
    assert spec.fairness is not None
    for column in spec.fairness.sensitive:
        if column not in modelling_columns:
            yield "fairness.sensitive", _not_a_column(column, modelling_columns, where)
        if column in spec.feature_columns:
            yield "fairness.sensitive", f"{column!r} is also a feature; a sensitive attribute is kept out of the features"
        if column == spec.target:
            yield "fairness.sensitive", f"{column!r} is the target; a sensitive attribute is a column of its own"
    if spec.fairness.max_equalized_odds_difference is not None and spec.task != "binary":
        yield "fairness.max_equalized_odds_difference", (
            f"found {spec.fairness.max_equalized_odds_difference:g} for task {spec.task}; equalized odds (true and "
            "false positive rates) is defined for task binary only: remove the key")


def _check_event_times(spec: ModelSpec, path: Path) -> Iterable[tuple[str, str]]:
    """A bounded sample of the time column, parsed as the raw asset will: ambiguous, numeric or implausible
    values and too many unparseable ones are named now, not found as silently wrong weeks later."""
    source = spec.source
    assert source.timestamp is not None
    try:
        values = sample_column(path, source.timestamp, source.null_values, SAMPLE_VALUES)
    except Exception as error:  # noqa: BLE001 - the kind only: reader messages may quote the file
        yield "source.path", f"cannot read column {source.timestamp!r} of {path.name} ({type(error).__name__})"
        return
    key = "source.timestamp_unit" if source.timestamp_unit else (
        "source.timestamp_format" if source.timestamp_format else "source.timestamp")
    problems, parsed = checked_event_times(values, source.timestamp, source.timezone, source.timestamp_format,
                                           source.timestamp_unit)
    for problem in problems:
        yield key, f"{problem} (checked the first {len(values)} rows of {path.name})"
    if problems:
        return
    present = values.dropna()
    if parsed is None:
        parsed = parse_event_times(present, source.timezone, source.timestamp_format, source.timestamp_unit)
    unparsed = parsed.isna()
    if len(present) and unparsed.mean() > source.max_unparsed_share:
        shown = ", ".join(repr(str(v)) for v in present[unparsed.to_numpy()].drop_duplicates().head(3))
        yield key, (f"{int(unparsed.sum())} of the first {len(present)} values of column {source.timestamp!r} do not "
                    f"parse as times (e.g. {shown}); allowed: a share up to source.max_unparsed_share "
                    f"({source.max_unparsed_share:g}). Set source.timestamp_format, or add the text to "
                    "source.null_values if it means 'unknown'")


def _check_factory(spec: ModelSpec) -> Iterable[tuple[str, str]]:
    """``estimator.factory``: allowed, importable, callable with ``params``, and what it returns is a model of the
    spec's task. Calling it here runs the team's (allowed) code once, as training will; it fits nothing."""
    dotted = spec.estimator.factory or ""
    module_name, _, function_name = dotted.rpartition(".")
    if not module_name:
        yield "estimator.factory", f"found {dotted!r}; give the full import path, e.g. my_team.models.build_pipeline"
        return
    try:
        check_allowed(dotted, spec.spec_file.parent)  # before any import: importing runs a module's code
    except EstimatorNotAllowed as refused:
        yield "estimator.factory", str(refused)
        return
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - the team's module may fail any way; its kind and text are its own
        yield "estimator.factory", f"found {dotted!r}; module {module_name!r} cannot be imported ({type(error).__name__}: {error})"
        return
    factory = getattr(module, function_name, None)
    if not callable(factory):
        candidates = [name for name in dir(module) if callable(getattr(module, name, None)) and not name.startswith("_")]
        yield "estimator.factory", (f"found {dotted!r}; {module_name} has no function {function_name!r}"
                                    + _suggest(function_name, candidates))
        return
    try:
        model = factory(**spec.estimator.params)
    except Exception as error:  # noqa: BLE001 - the factory's own refusal, reported with its name
        yield "estimator.params", f"{function_name}({_params_text(spec)}) failed: {type(error).__name__}: {error}"
        return
    if not (hasattr(model, "fit") and hasattr(model, "predict")):
        yield "estimator.factory", (f"{dotted} returned {type(model).__name__}, not an estimator or pipeline (needs "
                                    "fit and predict)")
        return
    if spec.task != "regression" and not hasattr(model, "predict_proba"):
        yield "estimator.factory", (f"{dotted} returned {type(model).__name__} without predict_proba; task "
                                    f"{spec.task} needs class probabilities")
        return
    from sklearn.base import is_classifier, is_regressor

    if spec.task == "regression" and is_classifier(model):
        yield "estimator.factory", f"{dotted} returned a classifier for task regression; return a regressor"
    elif spec.task != "regression" and is_regressor(model):
        yield "estimator.factory", f"{dotted} returned a regressor for task {spec.task}; return a classifier"


def _check_estimator(spec: ModelSpec) -> Iterable[tuple[str, str]]:
    if spec.estimator.factory is not None:
        yield from _check_factory(spec)
        return
    dotted = spec.estimator.class_name or ""
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        yield "estimator.class", f"found {dotted!r}; give the full import path, e.g. sklearn.ensemble.RandomForestRegressor"
        return
    try:
        check_allowed(dotted, spec.spec_file.parent)  # before any import: importing runs a module's code
    except EstimatorNotAllowed as refused:
        yield "estimator.class", str(refused)
        return
    try:
        module = importlib.import_module(module_name)
    except (ImportError, TypeError, ValueError) as error:  # TypeError: a relative name such as ".sklearn"
        yield "estimator.class", f"found {dotted!r}; module {module_name!r} cannot be imported ({error})"
        return
    estimator_class = getattr(module, class_name, None)
    if estimator_class is None:
        candidates = [name for name in dir(module) if name[:1].isupper()]
        yield "estimator.class", f"found {dotted!r}; {module_name} has no class {class_name!r}" + _suggest(class_name, candidates)
        return
    if not (isinstance(estimator_class, type) and hasattr(estimator_class, "fit") and hasattr(estimator_class, "predict")):
        yield "estimator.class", f"found {dotted!r}; it is not an estimator (needs fit and predict)"
        return
    if hasattr(estimator_class, "_get_param_names"):
        accepted = estimator_class._get_param_names()
        unknown = [param for param in spec.estimator.params if param not in accepted]
        for param in unknown:
            yield f"estimator.params.{param}", f"{class_name} has no parameter {param!r}" + _suggest(param, accepted)
        if unknown:
            return
    yield from _check_estimator_instance(spec, estimator_class, class_name)


def _check_estimator_instance(spec: ModelSpec, estimator_class: type, class_name: str) -> Iterable[tuple[str, str]]:
    """Build the estimator with its params, as training will: wrong types and the wrong kind of model show now,
    not after the data steps of a run."""
    try:
        estimator = estimator_class(**spec.estimator.params)
    except Exception as error:  # noqa: BLE001 - a constructor's own refusal, reported with the class
        yield "estimator.params", f"{class_name}({_params_text(spec)}) cannot be built: {error}"
        return
    validate = getattr(estimator, "_validate_params", None)  # scikit-learn >= 1.2: the declared parameter constraints
    if callable(validate):
        try:
            validate()
        except (TypeError, ValueError) as error:
            named = re.search(r"The '(\w+)' parameter", str(error))
            key = f"estimator.params.{named.group(1)}" if named else "estimator.params"
            yield key, str(error).replace("\n", " ")
            return
    try:
        from sklearn.base import is_classifier, is_regressor
    except ImportError:  # a non-scikit-learn package without scikit-learn installed: nothing to compare with
        return
    if spec.task == "regression" and is_classifier(estimator):
        yield "estimator.class", (f"found {spec.estimator.class_name!r}, a classifier, for task regression; "
                                  "use a regressor, e.g. sklearn.ensemble.HistGradientBoostingRegressor")
    elif spec.task != "regression" and is_regressor(estimator):
        yield "estimator.class", (f"found {spec.estimator.class_name!r}, a regressor, for task {spec.task}; "
                                  "use a classifier, e.g. sklearn.ensemble.HistGradientBoostingClassifier")


def _params_text(spec: ModelSpec) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in spec.estimator.params.items())


def dbt_manifest_columns(manifest_path: Path) -> DbtColumns:
    """A lookup of declared dbt model columns from a manifest.json (plain JSON: no dbt import needed)."""
    models: dict[str, list[str]] = {}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        for node in manifest.get("nodes", {}).values():
            if node.get("resource_type") == "model":
                models[node["name"]] = list(node.get("columns", {}))
    return models.get


def _not_a_column(found: str, available: list[str], where: str) -> str:
    """Name the columns there are, but only header entries that look like column names: a header is file content,
    and a file that is not really a table (a key, a password file) must not be echoed through this message."""
    names = [c for c in available if _is_column_like(c)]
    hidden = len(available) - len(names)
    shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
    if hidden:
        shown += f"{'; ' if names else ''}{hidden} header entries that are not column names (not shown)"
    return f"found {found!r}, which is not a column of {where}" + _suggest(found, names) + f"; columns: {shown}"


def _is_column_like(name: str) -> bool:
    try:
        check_column_name(name)
    except ValueError:
        return False
    return True


def _explain(error: ValidationError) -> Iterable[tuple[str, str]]:
    """Turn pydantic's errors into (dotted key, message saying what was found and what is allowed)."""
    for item in error.errors():
        loc = [str(part) for part in item["loc"] if part != "spec_file"]
        key = ".".join(loc) or "(top level)"
        kind = item["type"]
        found = item.get("input")
        if kind == "missing":
            yield key, "required key is missing"
        elif kind == "extra_forbidden":
            allowed = _allowed_keys(item["loc"][:-1])
            yield key, f"unknown key{_suggest(loc[-1], allowed)}; allowed keys here: {', '.join(allowed)}"
        elif kind == "literal_error":
            allowed = [str(a) for a in _literal_choices(item["loc"])] or [item["ctx"]["expected"]]
            yield key, f"found {found!r}; allowed: {', '.join(allowed)}" + _suggest(found, allowed)
        elif kind == "string_pattern_mismatch" and loc == ["name"]:
            yield key, (f"found {found!r}; a model name is lowercase letters, digits and underscores, "
                        "starting with a letter (e.g. bike_demand)")
        elif kind == "string_pattern_mismatch" and loc == ["team"]:
            yield key, (f"found {found!r}; a team name is lowercase letters, digits, '-' and '_', starting with a "
                        "letter, at most 63 characters (e.g. fraud, credit-risk)")
        elif kind in ("float_parsing", "float_type", "int_parsing", "int_type"):
            yield key, f"found {found!r}; expected a number"
        elif kind == "value_error":
            message = str(item["msg"]).removeprefix("Value error, ")
            # A check across sections (model_validator) has no location of its own: it names its key first.
            named = re.match(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", message, re.DOTALL)
            if named and (key == "(top level)" or named.group(1).startswith(key + ".")):
                key, message = named.groups()
            yield key, message
        else:
            yield key, f"{item['msg']}; found {found!r}"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The spec section at ``loc``; a mapping's own keys (``columns.<name>``) are stepped over."""
    model: type[BaseModel] | None = ModelSpec
    mapping_key_next = False
    for part in loc:
        if mapping_key_next:
            mapping_key_next = False
            continue
        if model is None or not isinstance(part, str):
            return model
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return None
        model = _unwrap_model(field.annotation)
        mapping_key_next = get_origin(field.annotation) is dict
    return model


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is dict:
        return _unwrap_model(get_args(annotation)[1])
    for arg in get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model = _model_at(loc)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items() if name != "spec_file"]


def _literal_choices(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    model = _model_at(loc[:-1])
    if model is None:
        return ()
    field = model.model_fields.get(str(loc[-1]))
    return get_args(field.annotation) if field is not None else ()



def check_spec(spec: ModelSpec, dbt_model_columns: DbtColumns | None = None) -> list[SpecProblem]:
    """The checks that need more than the YAML, for a spec validated elsewhere (a component's ``defs.yaml``), and
    its policy (``policies.yaml`` in the ``defs`` folder that holds the component, or ``MLPLATFORM_POLICIES``)."""
    try:
        policies, default_policy = load_policies(policies_path(spec.spec_file.parent.parent))
    except PolicyFileError as error:
        return [SpecProblem(file=str(error.file), key=error.key, message=error.message)]
    return [SpecProblem(file=str(spec.spec_file), key=key, message=message)
            for key, message in [*policy_problems(spec, policies, default_policy),
                                 *_check_against_world(spec, dbt_model_columns)]]
