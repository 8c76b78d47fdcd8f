"""The Dagster instance config of the shared mode: PostgreSQL storage, queued runs, one run per model at a time.

Pure data (no Dagster import), so `mlplatform prepare --instance postgres` writes it, a test validates it against
Dagster's own schema, and the Kubernetes values can be compared with it. The embedded mode's config stays in
``mlplatform/defs/instance.py`` (SQLite, ``max_concurrent_runs: 1``).

Why these settings:

- ``storage.postgres`` reads its URL from an environment variable (``{env: ...}``): no password is written to disk,
  and the webserver, the daemon and the run workers each read it from their own environment.
- ``QueuedRunCoordinator``: runs are submitted to a queue and the daemon launches them (through the code server),
  so the concurrency limits below are enforced in one place.
- ``concurrency.pools`` with ``granularity: run`` and ``default_limit: 1``: each model's assets and ops are in the
  pool :func:`mlplatform.names.model_pool`, so two runs of one model never overlap (they write the same tables and
  move the same aliases) while runs of different models do.
- ``run_monitoring``: a run that never starts, or hangs while canceling, is failed instead of holding its model's
  pool slot forever.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

POSTGRES_URL_ENV = "MLPLATFORM_DAGSTER_POSTGRES_URL"
MAX_RUNS_ENV = "MLPLATFORM_DAGSTER_MAX_CONCURRENT_RUNS"
CODE_SERVER_HOST_ENV = "MLPLATFORM_DAGSTER_CODE_SERVER_HOST"
CODE_SERVER_PORT_ENV = "MLPLATFORM_DAGSTER_CODE_SERVER_PORT"

DEFAULT_MAX_CONCURRENT_RUNS = 4
DEFAULT_POOL_LIMIT = 1
POOL_GRANULARITY = "run"
DEFAULT_CODE_SERVER_HOST = "127.0.0.1"
DEFAULT_CODE_SERVER_PORT = 4000
LOCATION_NAME = "mlplatform"

HEADER = "# Written by `mlplatform prepare --instance postgres`: PostgreSQL storage, queued runs, a pool per model.\n"
"""First line of the written files: a file that starts with it is the platform's own and may be rewritten."""

RUN_MONITORING: dict[str, Any] = {
    "enabled": True,
    "start_timeout_seconds": 600,  # a run that never started is failed
    "cancel_timeout_seconds": 300,  # a cancel that hangs is finished
    "max_resume_run_attempts": 0,  # never resume: a week is re-run instead
    "poll_interval_seconds": 60,
    "free_slots_after_run_end_seconds": 60,
}


class InstanceConfigError(ValueError):
    """A setting of the shared instance is missing or malformed; the message names it and how to fix it."""


def _positive_int(value: str | int | None, name: str, default: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InstanceConfigError(f"{name}={value!r}: expected a whole number of runs, e.g. 4") from None
    if number < 1:
        raise InstanceConfigError(f"{name}={value!r}: expected at least 1 (0 would stop every run)")
    return number


def concurrency_config(max_concurrent_runs: int | None = None, pool_limit: int = DEFAULT_POOL_LIMIT,
                       environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``concurrency`` block: at most ``max_concurrent_runs`` runs in all, ``pool_limit`` per model's pool."""
    environ = os.environ if environ is None else environ
    runs = _positive_int(max_concurrent_runs if max_concurrent_runs is not None else environ.get(MAX_RUNS_ENV),
                         MAX_RUNS_ENV, DEFAULT_MAX_CONCURRENT_RUNS)
    return {
        "pools": {"granularity": POOL_GRANULARITY, "default_limit": pool_limit},
        "runs": {"max_concurrent_runs": runs},
    }


def shared_instance_config(postgres_url_env: str = POSTGRES_URL_ENV, max_concurrent_runs: int | None = None,
                           environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``dagster.yaml`` of the shared mode, as a mapping (defaults from the environment).

    The PostgreSQL URL is not read here: the config names the variable, and each Dagster process reads it.
    """
    return {
        "telemetry": {"enabled": False},
        "storage": {"postgres": {"postgres_url": {"env": postgres_url_env}}},
        # launches in threads: one slow launch (a code server busy starting a run) does not hold up the others;
        # the queue is looked at every second (Dagster's default, 5 s, adds 2.5 s on average to every run's start)
        "run_coordinator": {"module": "dagster", "class": "QueuedRunCoordinator",
                            "config": {"dequeue_use_threads": True, "dequeue_num_workers": 4,
                                       "dequeue_interval_seconds": 1}},
        # runs start in a process of the code server that owns the job (the daemon never imports the code)
        "run_launcher": {"module": "dagster", "class": "DefaultRunLauncher"},
        "run_monitoring": dict(RUN_MONITORING),
        "concurrency": concurrency_config(max_concurrent_runs, environ=environ),
    }


def code_server_address(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """Where the gRPC code server listens: ``MLPLATFORM_DAGSTER_CODE_SERVER_HOST`` / ``_PORT`` (127.0.0.1:4000)."""
    environ = os.environ if environ is None else environ
    host = environ.get(CODE_SERVER_HOST_ENV, "").strip() or DEFAULT_CODE_SERVER_HOST
    port_text = environ.get(CODE_SERVER_PORT_ENV, "").strip()
    try:
        port = int(port_text) if port_text else DEFAULT_CODE_SERVER_PORT
    except ValueError:
        raise InstanceConfigError(f"{CODE_SERVER_PORT_ENV}={port_text!r}: expected a TCP port number, e.g. 4000") from None
    if not 0 < port < 65536:
        raise InstanceConfigError(f"{CODE_SERVER_PORT_ENV}={port_text!r}: expected a TCP port between 1 and 65535")
    return host, port


def workspace_for_code_server(host: str = DEFAULT_CODE_SERVER_HOST, port: int = DEFAULT_CODE_SERVER_PORT,
                              location_name: str = LOCATION_NAME) -> dict[str, Any]:
    """The ``workspace.yaml`` of the webserver and the daemon: the code location is a running gRPC server, so
    neither imports the platform's code, and runs are launched by that server, never in their process."""
    return {"load_from": [{"grpc_server": {"host": host, "port": port, "location_name": location_name}}]}


def check_postgres_url_set(postgres_url_env: str = POSTGRES_URL_ENV, environ: Mapping[str, str] | None = None) -> None:
    """Refuse to write a config whose processes could not reach their database."""
    environ = os.environ if environ is None else environ
    url = environ.get(postgres_url_env, "").strip()
    if not url:
        raise InstanceConfigError(
            f"{postgres_url_env} is not set: the shared Dagster instance stores runs, events and schedules in "
            f"PostgreSQL; set it to e.g. postgresql+psycopg2://dagster:PASSWORD@db-host:5432/dagster (the file "
            f"names the variable, never the password)")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        raise InstanceConfigError(
            f"{postgres_url_env} starts with {scheme}://, which SQLAlchemy 2 reads as the psycopg 3 driver (not "
            f"installed); write postgresql+psycopg2://{url.split('://', 1)[1].split('@')[-1]} (with the user and password)")
    if scheme != "postgresql+psycopg2":
        raise InstanceConfigError(f"{postgres_url_env} must be a PostgreSQL URL, "
                                  f"postgresql+psycopg2://user:password@host:port/database; found one starting "
                                  f"with {scheme or url[:12]!r}")
