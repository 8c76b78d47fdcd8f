"""Where the platform keeps its state and which stores it talks to: resolved once, from the environment.

Everything the platform writes at run time lives under ``MLPLATFORM_HOME`` so a laptop user
can delete one folder to start over, and a team can point it at a shared volume. The MLflow
store is resolved here and nowhere else. Reading settings changes nothing in the process;
:func:`configure_process` does that, and only the entry points call it (the CLI and the
Dagster code location).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
BUNDLED_SPECS_DIR = PACKAGE_DIR / "examples"
REPO_DIR = PACKAGE_DIR.parent
CHECKOUT_DBT_PROJECT_DIR = REPO_DIR / "dbt_project"
"""The bundled dbt project in a source checkout (beside the package)."""
PACKAGED_DBT_PROJECT_DIR = PACKAGE_DIR / "dbt_project"
"""The bundled dbt project inside an installed wheel (package data: the bundled examples stage through it)."""
DBT_PROJECT_DIR = PACKAGED_DBT_PROJECT_DIR if PACKAGED_DBT_PROJECT_DIR.is_dir() else CHECKOUT_DBT_PROJECT_DIR
"""The bundled dbt project, wherever this copy of the package carries it."""
DBT_PROJECT_ENV = "MLPLATFORM_DBT_PROJECT_DIR"
STRICT_SPECS_ENV = "MLPLATFORM_STRICT_SPECS"

DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"
DEFAULT_WAREHOUSE_WAIT_SECONDS = 600.0
REMOTE_TRACKING_SCHEMES = ("http://", "https://")


class SettingsError(ValueError):
    """A setting that cannot work: what is wrong and what to set instead (the CLI prints it as one line)."""


def is_remote_tracking(tracking_uri: str) -> bool:
    """A tracking server (as opposed to a database or folder the process opens itself)."""
    return tracking_uri.lower().startswith(REMOTE_TRACKING_SCHEMES)


def is_local_artifact_location(location: str) -> bool:
    """A path on this machine's disk: a plain path or a ``file:`` URI (every other scheme is a store's own)."""
    text = location.strip()
    return bool(text) and (text.lower().startswith("file:") or "://" not in text and not text.startswith(
        ("mlflow-artifacts:", "s3:", "gs:", "wasbs:", "abfss:", "hdfs:", "dbfs:", "runs:", "models:")))


def local_artifacts_refusal(tracking_uri: str, location: str, what: str) -> str | None:
    """Why ``location`` cannot hold artifacts for ``tracking_uri``, or None when it can.

    With a tracking server, runs, the CLI and serving replicas on other machines share only the server: a
    local folder named as artifact store would be written on one machine and be missing on every other.
    """
    if not is_remote_tracking(tracking_uri) or not is_local_artifact_location(location):
        return None
    return (f"{what} is {location!r}, a path on this machine's disk, but MLflow tracks to the server {tracking_uri}: "
            "other machines (serving replicas, other runs) cannot read it. Let the server proxy the artifacts "
            "(`mlflow server --artifacts-destination s3://bucket/path --serve-artifacts`) and leave "
            "MLPLATFORM_MLFLOW_ARTIFACTS unset (or set it to an mlflow-artifacts:/ or s3:// URI); see "
            "docs/operations.md, 'MLflow tracking server'")


EXECUTOR_ENV = "MLPLATFORM_EXECUTOR"
EXECUTORS = ("in_process", "multiprocess")
"""How a run's steps execute: in one process (the default: DuckDB allows one writer, and each step skips a process
start), or each step in its own process (Dagster's multiprocess executor; only with the PostgreSQL warehouse)."""


@dataclass(frozen=True)
class Settings:
    """Resolved locations and stores; build it with :func:`load_settings`."""

    home: Path
    specs_dir: Path
    mlflow_tracking_uri: str = ""  # a shared store (e.g. http://mlflow:5000); empty: SQLite under home
    mlflow_artifacts: str = ""  # with a tracking URI: where new experiments put artifacts (empty: the server's)
    mlflow_ui_url: str = DEFAULT_MLFLOW_UI_URL
    warehouse_wait_seconds: float = DEFAULT_WAREHOUSE_WAIT_SECONDS
    dbt_project_dir: Path = DBT_PROJECT_DIR  # the dbt project specs with `staging` run (MLPLATFORM_DBT_PROJECT_DIR)
    weekly_schedule_cron: str = ""  # testing only: a cron replacing "Mondays 01:00 UTC" (docs/shared-services.md)
    warehouse_url: str = ""  # postgresql://user:password@host:port/db (MLPLATFORM_WAREHOUSE_URL); empty: DuckDB file
    executor: str = "in_process"  # MLPLATFORM_EXECUTOR: in_process, or multiprocess (needs the PostgreSQL warehouse)
    extra_spec_dirs: tuple[Path, ...] = ()  # MLPLATFORM_SPECS as a path list: the spec roots after the first
    strict_specs: bool = False  # MLPLATFORM_STRICT_SPECS=1: any broken spec stops the code location from loading

    @property
    def spec_roots(self) -> tuple[Path, ...]:
        """Every spec root: ``MLPLATFORM_SPECS`` may list several folders (separated by ':'), e.g. one per team."""
        return (self.specs_dir, *self.extra_spec_dirs)

    @property
    def dbt_manifest_dir(self) -> Path:
        """Where the dbt project's manifest (and the logs of ``dbt parse``) go: the bundled project of a source
        checkout keeps its gitignored ``target/`` (shared by every home, as before); any other project, a team's
        or the bundled one inside an installed wheel, writes under ``MLPLATFORM_HOME``, never into site-packages
        or the team's repository."""
        if self.dbt_project_dir == CHECKOUT_DBT_PROJECT_DIR:
            return self.dbt_project_dir / "target"
        digest = hashlib.sha256(str(self.dbt_project_dir).encode()).hexdigest()[:12]
        return self.dbt_target_dir / "projects" / f"{self.dbt_project_dir.name}-{digest}"

    @property
    def dbt_manifest_path(self) -> Path:
        return self.dbt_manifest_dir / "manifest.json"

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def warehouse_backend(self) -> str:
        """``postgres`` when a PostgreSQL URL is configured, else ``duckdb`` (the embedded default)."""
        return "postgres" if self.warehouse_url else "duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def dbt_target_dir(self) -> Path:
        return self.home / "dbt"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking and registry store the platform uses."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path | str | None:
        """Where new experiments put artifacts: under home for the embedded store; as configured for a shared one
        (None: the tracking server's own, e.g. its proxied object storage); next to the database file for a
        ``sqlite:///`` URI of one's own (else MLflow would write to ``./mlruns`` in whatever folder a run starts)."""
        if self.mlflow_artifacts:
            return self.mlflow_artifacts if "://" in self.mlflow_artifacts else Path(self.mlflow_artifacts)
        if not self.mlflow_tracking_uri:
            return self.mlflow_dir / "artifacts"
        if self.mlflow_tracking_uri.startswith("sqlite:///"):
            return Path(self.mlflow_tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
        return None

    @property
    def embedded_mlflow(self) -> bool:
        return not self.mlflow_tracking_uri


def load_settings() -> Settings:
    """Read ``MLPLATFORM_HOME`` (default ``./.mlplatform``), ``MLPLATFORM_SPECS`` (default: bundled examples; several
    spec roots separated by ':'), ``MLPLATFORM_STRICT_SPECS``,
    ``MLPLATFORM_MLFLOW_*``, ``MLPLATFORM_WAREHOUSE_WAIT_SECONDS``, ``MLPLATFORM_DBT_PROJECT_DIR`` (default:
    the bundled dbt project), ``MLPLATFORM_WEEKLY_SCHEDULE_CRON``, ``MLPLATFORM_WAREHOUSE_URL`` and
    ``MLPLATFORM_EXECUTOR``."""
    home = Path(os.environ.get("MLPLATFORM_HOME", ".mlplatform")).expanduser().resolve()
    specs = [Path(p).expanduser().resolve() for p in os.environ.get("MLPLATFORM_SPECS", "").split(os.pathsep)
             if p.strip()]
    specs_dir, extra_spec_dirs = (specs[0], tuple(dict.fromkeys(specs[1:]))) if specs else (BUNDLED_SPECS_DIR, ())
    strict = os.environ.get(STRICT_SPECS_ENV, "").strip().lower()
    if strict not in ("", "0", "1", "true", "false", "yes", "no"):
        raise SettingsError(f"{STRICT_SPECS_ENV}={strict!r}: expected 1 (refuse to load on any broken spec) or 0")
    wait = os.environ.get("MLPLATFORM_WAREHOUSE_WAIT_SECONDS", "").strip()
    try:
        wait_seconds = float(wait) if wait else DEFAULT_WAREHOUSE_WAIT_SECONDS
    except ValueError:
        raise SettingsError(f"MLPLATFORM_WAREHOUSE_WAIT_SECONDS={wait!r}: expected a number of seconds") from None
    tracking_uri = os.environ.get("MLPLATFORM_MLFLOW_TRACKING_URI", "").strip()
    artifacts = os.environ.get("MLPLATFORM_MLFLOW_ARTIFACTS", "").strip()
    refusal = local_artifacts_refusal(tracking_uri, artifacts, "MLPLATFORM_MLFLOW_ARTIFACTS")
    if refusal:
        raise SettingsError(refusal)
    warehouse_url = os.environ.get("MLPLATFORM_WAREHOUSE_URL", "").strip()
    if warehouse_url and not warehouse_url.lower().startswith(("postgresql://", "postgres://")):
        raise SettingsError(f"MLPLATFORM_WAREHOUSE_URL={warehouse_url.split('@')[-1]!r}: expected a "
                            "postgresql://user:password@host:port/database URL, or unset it for the DuckDB file")
    executor = os.environ.get(EXECUTOR_ENV, "").strip().lower().replace("-", "_") or "in_process"
    if executor not in EXECUTORS:
        raise SettingsError(f"{EXECUTOR_ENV}={executor!r}: expected one of {', '.join(EXECUTORS)}")
    if executor == "multiprocess" and not warehouse_url:
        raise SettingsError(f"{EXECUTOR_ENV}=multiprocess needs a warehouse that takes several writers at once: set "
                            "MLPLATFORM_WAREHOUSE_URL=postgresql://... (DuckDB lets one process write its file, so "
                            "steps in separate processes would wait for each other), or unset it")
    return Settings(
        home=home,
        specs_dir=specs_dir,
        mlflow_tracking_uri=tracking_uri,
        mlflow_artifacts=artifacts,
        mlflow_ui_url=os.environ.get("MLPLATFORM_MLFLOW_UI_URL", "").strip() or DEFAULT_MLFLOW_UI_URL,
        warehouse_wait_seconds=wait_seconds,
        dbt_project_dir=_dbt_project_dir(),
        weekly_schedule_cron=os.environ.get("MLPLATFORM_WEEKLY_SCHEDULE_CRON", "").strip(),
        warehouse_url=warehouse_url,
        executor=executor,
        extra_spec_dirs=extra_spec_dirs,
        strict_specs=strict in ("1", "true", "yes"),
    )


def _dbt_project_dir() -> Path:
    """``MLPLATFORM_DBT_PROJECT_DIR`` made absolute, else the bundled project. Not checked here: a spec without
    staging never needs a dbt project, so only the specs that stage report a missing one."""
    configured = os.environ.get(DBT_PROJECT_ENV, "").strip()
    return Path(configured).expanduser().resolve() if configured else DBT_PROJECT_DIR


def ensure_home(settings: Settings) -> None:
    """Create the state folders (nothing else)."""
    for folder in (settings.home, settings.dagster_home, settings.dbt_target_dir, settings.mlflow_dir):
        folder.mkdir(parents=True, exist_ok=True)


def configure_process(settings: Settings) -> None:
    """The process-wide changes the platform needs, made once by an entry point (CLI, code location).

    dbt runs as a subprocess and reads the warehouse path from the environment (dbt_project/profiles.yml);
    it must be the dbt installed next to this interpreter even when the venv is not activated.
    MLflow must not phone home, draw progress bars, or log a line per registered version.
    """
    ensure_home(settings)
    os.environ["MLPLATFORM_WAREHOUSE"] = str(settings.warehouse_path)
    export_warehouse_url(settings.warehouse_url)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


def export_warehouse_url(url: str) -> None:
    """Make ``url`` the warehouse of this process and its children: ``MLPLATFORM_WAREHOUSE_URL`` (read where the
    warehouse is opened) and the ``MLPLATFORM_DBT_TARGET``/``MLPLATFORM_PG_*`` variables dbt's ``postgres`` target
    reads (dbt_project/profiles.yml). Empty: the DuckDB file."""
    from urllib.parse import unquote, urlsplit

    if not url:
        os.environ.pop("MLPLATFORM_WAREHOUSE_URL", None)
        os.environ["MLPLATFORM_DBT_TARGET"] = "local"
        return
    parts = urlsplit(url)
    os.environ["MLPLATFORM_WAREHOUSE_URL"] = url
    os.environ["MLPLATFORM_DBT_TARGET"] = "postgres"
    os.environ["MLPLATFORM_PG_HOST"] = parts.hostname or "localhost"
    os.environ["MLPLATFORM_PG_PORT"] = str(parts.port or 5432)
    os.environ["MLPLATFORM_PG_USER"] = unquote(parts.username or "postgres")
    os.environ["MLPLATFORM_PG_PASSWORD"] = unquote(parts.password or "")
    os.environ["MLPLATFORM_PG_DATABASE"] = unquote(parts.path.lstrip("/") or "postgres")


CODE_VERSION_ENV = "MLPLATFORM_CODE_VERSION"
"""The code version an image holds, e.g. ``mlplatform 0.1.0 @ 0123456789ab`` (the Dockerfile's build argument): an
image has no ``.git``. Recorded as it is by the audit; the hex after ``@`` is the commit runs are tagged with."""


@functools.cache
def _git_head(repo_dir: Path) -> str | None:
    """``git rev-parse HEAD`` of a checkout (read once per process); None when ``repo_dir`` is not one."""
    if not (repo_dir / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _image_code_version() -> str:
    return os.environ.get(CODE_VERSION_ENV, "").strip()


def git_commit() -> str | None:
    """The commit of the checkout the package runs from; without a git checkout (an image), the commit named in
    ``MLPLATFORM_CODE_VERSION`` (``... @ <commit>``), so runs still name the code that trained them."""
    head = _git_head(REPO_DIR)
    if head:
        return head
    _, at, commit = _image_code_version().rpartition("@")
    commit = commit.strip()
    return commit if at and re.fullmatch(r"[0-9a-fA-F]{7,40}", commit) else None


def code_version() -> str:
    """What the audit trail records as the code that acted: the package version and the commit of a checkout; in
    an image (no ``.git``) ``MLPLATFORM_CODE_VERSION`` as the build set it; else the package version alone."""
    from mlplatform.version import __version__

    head = _git_head(REPO_DIR)
    if head:
        return f"mlplatform {__version__} @ {head[:12]}"
    return _image_code_version() or f"mlplatform {__version__}"
