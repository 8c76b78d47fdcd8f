"""Real shared services for the `services` test stage: PostgreSQL 15, an S3 server (moto), an MLflow server.

Each is started on loopback in a temp folder by the fixture that needs it and stopped after. When a server
cannot be started here the test is skipped with the reason, unless MLPLATFORM_REQUIRE_SERVICES=1 (set by
`.ci/run`), where a missing server fails the stage instead of passing it quietly.

When the tests run as root, each "host" of a deployment can run as its own Unix user with a private home
(`host_user`), so anything that silently relies on a shared disk fails loudly.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE_SERVICES = os.environ.get("MLPLATFORM_REQUIRE_SERVICES") == "1"
VENV_BIN = Path(sys.executable).parent
S3_ACCESS_KEY = "mlplatform-test"
S3_SECRET_KEY = "mlplatform-test-secret"
S3_REGION = "us-east-1"


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI's services stage: a server that could not start is never a pass."""
    if REQUIRE_SERVICES:
        pytest.fail(f"shared service unavailable: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `check` until it returns a true value; on timeout (or if `process` died) fail with its log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    state = f"exited with {process.returncode}" if process is not None and process.poll() is not None else "timed out"
    raise RuntimeError(f"{what} did not come up ({state}):\n{tail}")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
        return 200 <= response.status < 300


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 15)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait(5)


# --------------------------------------------------------------------------- users


@dataclass(frozen=True)
class HostUser:
    """A Unix user standing for one host: its own uid and a private (0700) home."""

    name: str
    uid: int
    gid: int
    home: Path


def host_user(name: str, base: Path) -> HostUser | None:
    """Create (once) and return a Unix user `mlp-<name>` with a fresh private home under `base`.

    Returns None when not running as root (the processes then run as the current user, and the test says so).
    """
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        return None
    user = f"mlp-{name}"[:32]
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    entry = pwd.getpwnam(user)
    home = base / f"home-{name}"
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    home.chmod(0o700)
    try:
        probe = subprocess.run([sys.executable, "-c", "import mlplatform"], user=entry.pw_uid, group=entry.pw_gid,
                               extra_groups=[], cwd=home, capture_output=True, text=True)
        reason = probe.stderr.strip()[-200:] if probe.returncode != 0 else ""
    except PermissionError as error:
        reason = str(error)
    if reason:
        # A checkout under a private directory (mktemp -d is 0700) hides the virtualenv from other users:
        # the processes then run as the current user, as when not root, and the test says so.
        warnings.warn(f"user {user} cannot run {sys.executable} ({reason}); "
                      "running as the current user instead", stacklevel=2)
        return None
    return HostUser(user, entry.pw_uid, entry.pw_gid, home)


def spawn(command: list[str], log: Path, env: dict[str, str], cwd: Path, user: HostUser | None = None
          ) -> subprocess.Popen:
    """Start a server in its own process group, output to `log`, optionally as `user` with HOME=its home."""
    kwargs: dict = {}
    env = dict(env)
    if user is not None:
        kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
        env["HOME"] = str(user.home)
        env.setdefault("USER", user.name)
    handle = log.open("ab")
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True, **kwargs)


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path | None:
    """Debian's PostgreSQL server binaries (initdb lives outside PATH there)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if candidates:
        return candidates[0].parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster on loopback, trust auth for the `postgres` role."""

    port: int
    bin_dir: Path
    data_dir: Path
    process_user: str | None
    databases: set[str] = field(default_factory=set)

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run([str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                                 "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
                                capture_output=True, text=True, check=True)
        return result.stdout

    def create_database(self, name: str) -> str:
        """A new empty database (dropped first if a previous test left it); returns its URL."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.psql(f'CREATE DATABASE "{name}"')
        self.databases.add(name)
        return self.url(name)


def _run_as_postgres_user(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """initdb and the server refuse to run as root: drop to the `postgres` user when we are root."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    return subprocess.run(command, **kwargs)


@contextlib.contextmanager
def running_postgres(base: Path) -> Iterator[PostgresServer]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        unavailable("PostgreSQL server binaries (initdb) not found; `.ci/run` installs Debian's postgresql")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no `postgres` user to run the server as")
    base.mkdir(parents=True, exist_ok=True)
    data_dir = base / "pgdata"
    socket_dir = base / "pgsock"
    socket_dir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in (base, socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    base.chmod(0o755)
    init = _run_as_postgres_user([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "-A", "trust",
                                  "-E", "UTF8", "--no-sync"], capture_output=True, text=True, cwd=base)
    if init.returncode != 0:
        unavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
    port = free_port()
    log = base / "postgres.log"
    options = (f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
               f"-c full_page_writes=off -c max_connections=200 -c shared_buffers=64MB")
    start = _run_as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log), "-o", options,
                                   "-w", "-t", "60", "start"], capture_output=True, text=True, cwd=base)
    if start.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        unavailable(f"pg_ctl start failed: {start.stderr.strip()[-500:]} {tail}")
    server = PostgresServer(port=port, bin_dir=bin_dir, data_dir=data_dir,
                            process_user="postgres" if os.geteuid() == 0 else None)
    try:
        yield server
    finally:
        _run_as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"],
                              capture_output=True, cwd=base)


# --------------------------------------------------------------------------- S3 (moto server)


@dataclass
class S3Server:
    """moto's S3-compatible server on loopback, with fixed test credentials."""

    endpoint_url: str

    def client_env(self) -> dict[str, str]:
        """What a process that may talk to S3 directly needs (the MLflow server, the prediction-log uploader)."""
        return {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
                "AWS_DEFAULT_REGION": S3_REGION, "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
                "AWS_ENDPOINT_URL_S3": self.endpoint_url}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=S3_ACCESS_KEY,
                            aws_secret_access_key=S3_SECRET_KEY, region_name=S3_REGION)

    def create_bucket(self, name: str) -> str:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return [item["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                for item in page.get("Contents", [])]


@contextlib.contextmanager
def running_s3(base: Path) -> Iterator[S3Server]:
    server_bin = VENV_BIN / "moto_server"
    if not server_bin.exists():
        unavailable("moto_server not installed (moto[server] is in requirements-dev.in)")
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = base / "moto.log"
    process = spawn([str(server_bin), "-H", "127.0.0.1", "-p", str(port)], log, dict(os.environ), base)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{url}/moto-api/"), 60, "moto S3 server", process, log)
        yield S3Server(endpoint_url=url)
    finally:
        stop_process(process)


# --------------------------------------------------------------------------- MLflow server


@dataclass
class MlflowServer:
    tracking_uri: str
    artifacts_destination: str


@contextlib.contextmanager
def running_mlflow_server(base: Path, backend_store_uri: str, s3: S3Server, bucket: str = "mlflow",
                          user: HostUser | None = None) -> Iterator[MlflowServer]:
    """`mlflow server` with proxied artifacts in S3: clients need only the tracking URI, never S3 credentials."""
    base.mkdir(parents=True, exist_ok=True)
    destination = f"{s3.create_bucket(bucket)}/artifacts"
    port = free_port()
    log = base / "mlflow-server.log"
    env = {**os.environ, **s3.client_env()}
    command = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", backend_store_uri,
               "--artifacts-destination", destination, "--serve-artifacts", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    process = spawn(command, log, env, base, user)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{uri}/health"), 120, "mlflow server", process, log)
        yield MlflowServer(tracking_uri=uri, artifacts_destination=destination)
    finally:
        stop_process(process)


# --------------------------------------------------------------------------- fixtures (session scope: tests reuse)


@contextlib.contextmanager
def traversable_tmp_dir(name: str) -> Iterator[Path]:
    """A temp folder other Unix users can reach (pytest's own tmp root is 0700 to root): for servers run as
    `postgres` and for host users, whose private homes inside it stay 0700."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=f"mlp-{name}-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with traversable_tmp_dir("postgres") as base, running_postgres(base) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with traversable_tmp_dir("s3") as base, running_s3(base) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(postgres_server: PostgresServer, s3_server: S3Server) -> Iterator[MlflowServer]:
    postgres_server.create_database("mlflow_tracking")
    # SQLAlchemy 2 reads a bare postgresql:// as psycopg 3; the platform ships psycopg2 (dagster-postgres's driver).
    backend = postgres_server.url("mlflow_tracking", driver="postgresql+psycopg2")
    with traversable_tmp_dir("mlflow") as base, running_mlflow_server(base, backend, s3_server) as server:
        yield server


# --------------------------------------------------------------------------- Dagster: code server, daemon, webserver


@dataclass
class DagsterStack:
    """The shared-mode Dagster processes on one PostgreSQL instance: a gRPC code server (which launches every run),
    `dagster-daemon` (queue, schedules, sensors, run monitoring) and `dagster-webserver` (GraphQL, the UI)."""

    dagster_home: Path
    webserver_port: int
    code_server_port: int
    logs: dict[str, Path]

    def client(self):
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient("127.0.0.1", port_number=self.webserver_port, timeout=120)

    def log_tails(self, size: int = 4000) -> str:
        return "\n".join(f"--- {name} ---\n{path.read_text(errors='replace')[-size:]}"
                         for name, path in self.logs.items() if path.exists())


def _grpc_serving(port: int) -> bool:
    from dagster._grpc.client import DagsterGrpcClient

    with socket.create_connection(("127.0.0.1", port), timeout=2):  # not listening yet: no gRPC retry noise
        pass

    return DagsterGrpcClient(port=port, host="127.0.0.1").health_check_query() == "SERVING"


@contextlib.contextmanager
def running_dagster(base: Path, env: dict[str, str], before_daemon=None) -> Iterator[DagsterStack]:
    """Write the shared instance with `mlplatform prepare --instance postgres`, then start the code server, the
    webserver and the daemon, each its own process over that instance; stop them all after.

    ``env`` must hold MLPLATFORM_HOME, MLPLATFORM_SPECS and MLPLATFORM_DAGSTER_POSTGRES_URL. ``before_daemon(stack)``
    may submit runs while nothing dequeues them yet (they are first in the queue when the daemon starts).
    """
    base.mkdir(parents=True, exist_ok=True)
    code_port, web_port = free_port(), free_port()
    dagster_home = Path(env["MLPLATFORM_HOME"]) / "dagster"
    env = {**os.environ, **env, "DAGSTER_HOME": str(dagster_home), "MLPLATFORM_DAGSTER_CODE_SERVER_PORT": str(code_port),
           "PYTHONUNBUFFERED": "1"}
    prepare = subprocess.run([str(VENV_BIN / "mlplatform"), "prepare", "--instance", "postgres"], env=env, cwd=base,
                             capture_output=True, text=True, timeout=300)
    if prepare.returncode != 0:
        raise RuntimeError(f"mlplatform prepare --instance postgres failed:\n{prepare.stdout}\n{prepare.stderr}")
    workspace = str(dagster_home / "workspace.yaml")
    logs = {name: base / f"{name}.log" for name in ("code-server", "daemon", "webserver")}
    processes: list[subprocess.Popen] = []
    try:
        code_server = spawn([str(VENV_BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(code_port),
                             "-m", "mlplatform.definitions", "--location-name", "mlplatform"],
                            logs["code-server"], env, base)
        processes.append(code_server)
        wait_for(lambda: _grpc_serving(code_port), 240, "dagster code server", code_server, logs["code-server"])
        web = spawn([str(VENV_BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(web_port)],
                    logs["webserver"], env, base)
        processes.append(web)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{web_port}/server_info"), 180, "dagster webserver", web,
                 logs["webserver"])
        stack = DagsterStack(dagster_home=dagster_home, webserver_port=web_port, code_server_port=code_port, logs=logs)
        if before_daemon is not None:
            before_daemon(stack)
        processes.append(spawn([str(VENV_BIN / "dagster-daemon"), "run", "-w", workspace], logs["daemon"], env, base))
        yield stack
    finally:
        for process in reversed(processes):
            stop_process(process, timeout=30)
