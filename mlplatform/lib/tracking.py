"""MLflow: runs, registered versions and aliases for the models of the specs.

The store is resolved by the platform's settings, and artifacts get an explicit location so nothing lands in
``./mlruns``; with a tracking server, artifacts go through the server (a local path is refused). Each Dagster run's
parent MLflow run is owned by dagster-mlflow's ``mlflow_tracking`` resource when the job has it (the weeks a step
logs are nested under it, from any process), else opened and closed here (see docs/configuration.md).
"""

from __future__ import annotations

import functools
import platform
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from mlplatform.lib.aliases import CHALLENGER, CHAMPION  # noqa: F401  (re-exported)
from mlplatform.lib.settings import Settings, SettingsError, git_commit, local_artifacts_refusal
from mlplatform.version import __version__

TRACKED_LIBRARIES = ("scikit-learn", "scipy", "pandas", "numpy", "mlflow", "dagster", "pandera", "duckdb")
"""Recorded with every version as ``library.<name>`` tags: ``mlplatform reproduce`` names the ones that differ now."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries a model depends on (read once per process: metadata lookups are slow)."""
    return dict(_installed_versions(TRACKED_LIBRARIES))


@functools.cache
def _installed_versions(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    found = []
    for name in names:
        try:
            found.append((name, importlib_metadata.version(name)))
        except importlib_metadata.PackageNotFoundError:
            continue
    return tuple(found)


def pip_requirements() -> list[str]:
    """Exact pins of what the pickled pipeline needs; explicit, because inferring them costs seconds per model."""
    return [f"{name}=={version}"
            for name, version in _installed_versions(("scikit-learn", "pandas", "numpy", "scipy", "cloudpickle"))]


_OWN_TYPES: dict[tuple[str, ...], list[str]] = {}


def own_types(pipeline: Any) -> list[str]:
    """The types skops must trust to load this pipeline: we trained it, so its own types are trusted.

    MLflow saves sklearn models with skops, which refuses unknown types (e.g. HistGradientBoosting's
    TreePredictor) unless they are listed; the list is stored with the model for every later load.
    Cached per pipeline structure: serialising a model only to list its types is not free.
    """
    import skops.io

    structure = _structure(pipeline)
    if structure not in _OWN_TYPES:
        _OWN_TYPES[structure] = sorted(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)))
    return _OWN_TYPES[structure]


@contextmanager
def _creating_sqlite_store(tracking_uri: str) -> Iterator[bool]:
    """An exclusive lock while a SQLite store that does not exist yet is created (yields True then).

    MLflow creates its tables on first use; two processes doing it at once fail ("duplicate column name",
    "Online migration expected to match one row", "table _alembic_tmp_... already exists"), e.g. two models' runs
    starting together on a fresh home, or a daemon's run beside the CLI. The file's size says nothing (it is
    non-empty as soon as the first migration starts), so a marker written after the tables are complete does.
    """
    import fcntl

    path = Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None
    if path is None or (path.exists() and path.with_name(path.name + ".created").exists()):
        yield False
        return
    created = path.with_name(path.name + ".created")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".create-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield True  # a process that waited finds the tables made: creating them again is a no-op
            created.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ended_status(dagster_run_status: str | None) -> str:
    """The MLflow status for a parent run whose Dagster run ended as ``dagster_run_status`` (e.g. ``SUCCESS``)."""
    return {"SUCCESS": "FINISHED", "FAILURE": "FAILED"}.get(dagster_run_status or "", "KILLED")


def _structure(pipeline: Any) -> tuple[str, ...]:
    """The types (and functions) a pipeline is made of, nested steps included: two pipelines with the same top-level
    steps but other transformers inside (a text column's TF-IDF) need other trusted types."""
    def name(value: Any) -> str:
        kind = value if callable(value) and not hasattr(value, "get_params") else type(value)
        return f"{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', type(kind).__name__)}"

    parts = {name(step) for _, step in pipeline.steps}
    for value in pipeline.get_params(deep=True).values():
        if hasattr(value, "get_params") or (callable(value) and not isinstance(value, type)):
            parts.add(name(value))
    return tuple(sorted(parts))


@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    version: str
    experiment_id: str
    artifact_uri: str = ""


class Tracker:
    """MLflow store at ``tracking_uri`` with per-experiment artifact folders under ``artifact_root``.

    ``artifact_root`` None leaves artifact locations to the store (a tracking server's own artifact store).
    """

    def __init__(self, tracking_uri: str, artifact_root: Path | str | None):
        from mlplatform.lib.stores import refuse_damaged_sqlite

        refuse_damaged_sqlite(tracking_uri)  # MLflow's client would fail on it with a raw SQLAlchemy traceback
        refusal = local_artifacts_refusal(tracking_uri, str(artifact_root or ""), "the artifact root")
        if refusal:
            raise SettingsError(refusal)
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        with _creating_sqlite_store(tracking_uri) as creating:
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            if creating:  # create the tables now, under the lock
                self.client.search_experiments(max_results=1)
                self.client.search_registered_models(max_results=1)
        self._models: dict[tuple[str, str], Any] = {}
        self._parents: dict[str, str] = {}  # model -> the open parent run of this Dagster run (see parent_run)

    @classmethod
    def for_settings(cls, settings: Settings) -> Tracker:
        """The store the platform is configured for (see :class:`~mlplatform.lib.settings.Settings`)."""
        if settings.embedded_mlflow:
            return cls.under(settings.mlflow_dir)
        return cls(settings.tracking_uri, settings.artifact_root)

    @classmethod
    def under(cls, mlflow_dir: Path) -> Tracker:
        mlflow_dir.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{mlflow_dir / 'mlflow.db'}", mlflow_dir / "artifacts")

    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            refusal = local_artifacts_refusal(self.tracking_uri, found.artifact_location or "",
                                              f"the artifact location of experiment {name!r}")
            if refusal:  # e.g. a server started without --artifacts-destination, or an experiment made by hand
                raise SettingsError(refusal)
            return found.experiment_id
        location = None
        if isinstance(self.artifact_root, Path):
            location = (self.artifact_root / name).resolve().as_uri()
        elif self.artifact_root:
            location = f"{self.artifact_root.rstrip('/')}/{name}"
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            return self.client.get_experiment_by_name(name).experiment_id

    @contextmanager
    def _active(self, experiment: str, run_name: str, tags: Mapping[str, str]) -> Iterator[Any]:
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        parent = self._parents.get(experiment)
        active = mlflow.active_run()
        if active is not None and active.info.run_id != parent:
            raise RuntimeError(f"MLflow run {active.info.run_id} is active in this thread, not the parent run "
                               f"{parent} of {experiment}: a week's run would be filed under the wrong parent")
        # nested: the parent is the active run when dagster-mlflow's resource opened it in this thread
        with mlflow.start_run(experiment_id=self.experiment_id(experiment), run_name=run_name, tags=dict(tags),
                              parent_run_id=parent, nested=active is not None) as run:
            yield run

    def active_run_of(self, dagster_run_id: str) -> str | None:
        """The MLflow run active in this thread when it belongs to ``dagster_run_id`` (dagster-mlflow's resource
        tags it ``dagster_run_id`` and makes it the active run of the step's thread), else None."""
        active = mlflow.active_run()
        if active is None:
            return None
        run = self.client.get_run(active.info.run_id)
        return active.info.run_id if run.data.tags.get("dagster_run_id") == dagster_run_id else None

    @contextmanager
    def parent_run(self, model_name: str, dagster_run_id: str, description: str,
                   owner_run_id: str | None = None) -> Iterator[str]:
        """One MLflow run per Dagster run and model; the weeks it logs meanwhile are nested under it.

        In the MLflow UI a backfill's weeks then sit under one row named after the Dagster run, tagged
        with its id (``dagster.run_id``). ``owner_run_id``: the run dagster-mlflow's resource opened for this
        Dagster run; it becomes the parent and is left open (the job's ``end_mlflow_on_run_finished`` hook ends
        it when the Dagster run ends). Without it the parent is opened here and ends FINISHED or FAILED with
        the Dagster step.
        """
        tags = {"dagster.run_id": dagster_run_id, "mlplatform.model": model_name, "mlflow.note.content": description}
        if owner_run_id is not None:
            owner = self.client.get_run(owner_run_id)
            if owner.info.experiment_id != self.experiment_id(model_name):
                raise RuntimeError(f"the MLflow run {owner_run_id} of Dagster run {dagster_run_id} is in experiment "
                                   f"{owner.info.experiment_id}, not {model_name!r}: the job's `mlflow` resource "
                                   "must name the model's experiment")
            self.client.log_batch(owner_run_id, tags=[RunTag(key, value) for key, value in tags.items()])
            self._parents[model_name] = owner_run_id
            try:
                yield owner_run_id
            finally:
                self._parents.pop(model_name, None)
            return
        run = self.client.create_run(self.experiment_id(model_name), run_name=f"dagster-{dagster_run_id[:8]}",
                                     tags=tags)
        self._parents[model_name] = run.info.run_id
        status = "FAILED"
        try:
            yield run.info.run_id
            status = "FINISHED"
        finally:
            self._parents.pop(model_name, None)
            self.client.set_terminated(run.info.run_id, status=status)

    def log_trained_model(
        self,
        model_name: str,
        run_name: str,
        pipeline: Any,
        x_example: Any,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        artifacts: Mapping[str, bytes | str],
        version_tags: Mapping[str, str] | None = None,
    ) -> LoggedModel:
        """One MLflow run: params, metrics, tags, artifacts, the model with an explicit signature, a registry version.

        ``version_tags`` are written with the registry version in one transaction (not a call per tag).
        """
        tags = {**tags, "mlplatform.version": __version__, "python.version": platform.python_version(),
                **{f"library.{k}": v for k, v in library_versions().items()}}
        commit = git_commit()
        if commit:
            tags["git.commit"] = commit
        with self._active(model_name, run_name, tags) as run:
            mlflow.log_params({k: _param_text(v) for k, v in params.items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
            with tempfile.TemporaryDirectory() as folder:
                for file_name, content in artifacts.items():
                    path = Path(folder) / file_name
                    path.write_bytes(content if isinstance(content, bytes) else content.encode())
                    mlflow.log_artifact(str(path))
            signature = infer_signature(x_example, pipeline.predict(x_example))
            info = mlflow.sklearn.log_model(
                pipeline, name="model", signature=signature, pip_requirements=pip_requirements(),
                skops_trusted_types=own_types(pipeline),
            )
            version = self._register(model_name, info, run.info.run_id, version_tags or {})
            self._models[(model_name, version)] = pipeline  # the next week's champion is often this one
            return LoggedModel(run_id=run.info.run_id, version=version, experiment_id=run.info.experiment_id,
                               artifact_uri=run.info.artifact_uri)

    def _register(self, model_name: str, info: Any, run_id: str, tags: Mapping[str, str]) -> str:
        """A new registry version of the logged model (through the client: the fluent API prints to stderr)."""
        try:
            self.client.get_registered_model(model_name)
        except MlflowException:
            try:
                self.client.create_registered_model(model_name, description=f"mlplatform model spec {model_name}")
            except MlflowException:  # created meanwhile
                pass
        created = self.client.create_model_version(
            model_name, source=info.model_uri, run_id=run_id, model_id=info.model_id, await_creation_for=0,
            tags=dict(tags),
        )
        return str(created.version)

    def alias_version(self, model_name: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(model_name, alias).version)
        except MlflowException:
            return None

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Only :mod:`mlplatform.lib.promotion` moves aliases (with their audit row)."""
        self.client.set_registered_model_alias(model_name, alias, version)

    def delete_alias(self, model_name: str, alias: str) -> None:
        self.client.delete_registered_model_alias(model_name, alias)

    def version_tags(self, model_name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(model_name, version).tags)

    def set_version_tag(self, model_name: str, version: str, key: str, value: str) -> None:
        """Only :mod:`mlplatform.lib.promotion` tags a version after training (a forced approval)."""
        self.client.set_model_version_tag(model_name, version, key, value)

    def delete_version_tag(self, model_name: str, version: str, key: str) -> None:
        self.client.delete_model_version_tag(model_name, version, key)

    def model_tags(self, model_name: str) -> dict[str, str] | None:
        """The registered model's own tags (not a version's); None when no model of that name is registered."""
        try:
            return dict(self.client.get_registered_model(model_name).tags)
        except MlflowException:
            return None

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        """Only :mod:`mlplatform.lib.promotion` tags the registered model (the audit head, with an alias move)."""
        self.client.set_registered_model_tag(model_name, key, value)

    def delete_model_tag(self, model_name: str, key: str) -> None:
        self.client.delete_registered_model_tag(model_name, key)

    def load_version(self, model_name: str, version: str) -> Any:
        """The sklearn pipeline of a registered version (cached: versions are immutable)."""
        key = (model_name, version)
        if key not in self._models:
            mlflow.set_registry_uri(self.tracking_uri)
            mlflow.set_tracking_uri(self.tracking_uri)
            self._models[key] = mlflow.sklearn.load_model(f"models:/{model_name}/{version}")
        return self._models[key]

    def run(self, run_id: str) -> Any:
        return self.client.get_run(run_id)

    def log_files(self, run_id: str, files: Mapping[str, bytes | str]) -> None:
        """Add files to a finished run's artifacts (the model card, written once the week's aliases are decided)."""
        with tempfile.TemporaryDirectory() as folder:
            for file_name, content in files.items():
                (Path(folder) / file_name).write_bytes(content if isinstance(content, bytes) else content.encode())
            self.client.log_artifacts(run_id, folder)

    def read_artifact(self, run_id: str, name: str) -> bytes | None:
        """One artifact of a run, or None when the run has none of that name."""
        import mlflow.artifacts

        try:
            with tempfile.TemporaryDirectory() as folder:
                path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=folder,
                                                           tracking_uri=self.tracking_uri)
                return Path(path).read_bytes()
        except (MlflowException, OSError):
            return None


def _param_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
