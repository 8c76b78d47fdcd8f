"""Stateless serving replicas, for real: two `mlplatform serve` processes (each its own Unix user, own home and
spool, no training data) behind haproxy, models from the MLflow tracking server (PostgreSQL, artifacts proxied
into S3), the prediction log on the S3 server.

What is measured is printed (alias move to both replicas answering with the new version), never asserted on time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import pytest

from mlplatform.lib.object_store import PREDICTION_LOG_URI_ENV, REPLICA_ID_ENV
from mlplatform.lib.prediction_log import (
    ChildProcessLogWriter,
    read_prediction_log,
    spool_root,
    utc_now,
    write_segments,
)
from mlplatform.lib.routing import CANARY_ROLE, CHAMPION_ROLE
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.services import (
    HostUser,
    MlflowServer,
    S3Server,
    free_port,
    host_user,
    http_ok,
    spawn,
    stop_process,
    traversable_tmp_dir,
    unavailable,
    wait_for,
)

pytestmark = pytest.mark.services

MODEL = "toy_replicas"  # its own registered name: the MLflow server is shared by the session's services tests
HAPROXY = Path("/usr/sbin/haproxy")
POLL_SECONDS = 2.0


def log_row(request: str, when: datetime, score: float = 1.0) -> dict:
    return {"request_id": request, "record_index": 0, "record_id": None, "time": when, "model": MODEL,
            "version": "1", "role": CHAMPION_ROLE, "entity_key": "7", "label": str(score), "score": score,
            "probabilities": None, "latency_ms": 1.0, "inputs": {"x1": 1.0, "x2": 0.0, "color": "red"}}


def test_the_log_writer_uploads_leftovers_at_start_each_flush_and_drains_at_close(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.client_env().items():
        monkeypatch.setenv(name, value)
    uri = f"{s3_server.create_bucket('plog-writer')}/unit"
    home, now = tmp_path / "replica", utc_now()
    write_segments(spool_root(home), [log_row("left-0", now)])  # a replica stopped before its spool was drained
    writer = ChildProcessLogWriter(home, flush_seconds=60, uri=uri, replica="pod-a")
    assert writer.spooled_segments == 1
    writer.start()
    writer.write([log_row(f"r-{i}", now) for i in range(5)])
    assert writer.flush() == 5
    writer.write([log_row(f"r-{i}", now) for i in range(5, 8)])  # only the drain at close publishes these
    writer.close()
    assert list(spool_root(home).rglob("*.parquet")) == []  # everything left the spool, so it is in the bucket
    assert writer.spooled_segments == 0
    keys = [k for k in s3_server.keys("plog-writer", "unit/") if k.endswith(".parquet")]  # not the manifest entries
    assert len(keys) == 3 and all(k.startswith(f"unit/{MODEL}/date={now:%Y-%m-%d}/hour={now:%H}/") for k in keys)
    assert sum("/pod-a-" in k for k in keys) == 2  # the leftover kept its name; the writer named its own
    s3_server.client().copy_object(Bucket="plog-writer", Key=keys[0] + ".again.parquet",  # uploaded twice
                                   CopySource={"Bucket": "plog-writer", "Key": keys[0]})
    logged = read_prediction_log(tmp_path / "reader", MODEL, uri=uri)
    assert sorted(logged["request_id"]) == sorted(["left-0", *(f"r-{i}" for i in range(8))])


# --------------------------------------------------------------------------- two replicas behind haproxy


@dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen
    home: Path
    user: HostUser | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def champion(self) -> str | None:
        found = httpx.get(f"{self.url}/v1/models/{MODEL}", timeout=5).json()["champion"]
        return found and found["version"]


@dataclass
class Traffic:
    """Clients sending 1-record requests through the balancer, each with its own request id."""

    url: str
    answered: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def send(self, http: httpx.Client, request_id: str, entity: int, url: str | None = None) -> dict | None:
        record = {"id": entity, "x1": float(entity % 10), "x2": 0.5, "color": "red"}
        try:
            response = http.post(f"{url or self.url}/v1/models/{MODEL}/predict", json={"records": [record]},
                                 headers={"X-Request-ID": request_id})
        except httpx.HTTPError as error:
            with self.lock:
                self.failed[request_id] = f"{type(error).__name__}: {error}"
            return None
        with self.lock:
            if response.status_code == 200:
                self.answered[request_id] = answer = response.json()["predictions"][0]
                return answer
            self.failed[request_id] = f"{response.status_code}: {response.text[:200]}"
        return None

    def start(self, clients: int = 3) -> None:
        def client(n: int) -> None:
            with httpx.Client(timeout=30) as http:
                i = 0
                while not self.stop.is_set():
                    self.send(http, f"lb-{n}-{i}", (n * 7919 + i) % 50)
                    i += 1

        self.threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def haproxy_config(port: int, backends: list[Replica]) -> str:
    """Round robin; health checks on /ready; a request that finds a replica gone is retried on the other."""
    servers = "\n".join(f"    server {r.name} 127.0.0.1:{r.port} check" for r in backends)
    return textwrap.dedent(f"""\
        global
            maxconn 512
        defaults
            mode http
            timeout connect 2s
            timeout client 60s
            timeout server 60s
            timeout queue 30s
            retries 5
            option redispatch 1
            retry-on conn-failure empty-response 503
        frontend serving
            bind 127.0.0.1:{port}
            default_backend replicas
        backend replicas
            balance roundrobin
            option httpchk GET /ready
            http-check expect status 200
            default-server inter 250ms fall 1 rise 2
        """) + servers + "\n"


def start_replica(name: str, base: Path, specs_dir: Path, env: dict[str, str]) -> Replica:
    user = host_user(f"srv-{name}", base)
    home = (user.home if user else base / f"home-{name}") / ".mlplatform"
    if user is None:
        home.mkdir(parents=True)
    port = free_port()
    command = [sys.executable, "-m", "mlplatform.cli", "serve", "--port", str(port), "--model", MODEL,
               "--poll-seconds", str(POLL_SECONDS), "--flush-seconds", "0.5", "--log-level", "warning",
               "--drain-seconds", "2"]  # haproxy checks /ready every 250 ms and takes a replica out at one 503
    process = spawn(command, base / f"{name}.log", {**env, "MLPLATFORM_HOME": str(home), REPLICA_ID_ENV: name},
                    user.home if user else base, user)
    return Replica(name, port, process, home, user)


@pytest.fixture(scope="module")
def world(mlflow_server: MlflowServer, s3_server: S3Server) -> Iterator[dict]:
    """A spec folder with no data, three registered versions (champion v1, canary challenger v2), a log bucket."""
    from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
    from mlplatform.lib.training import build_pipeline, split_xy
    from mlplatform.specs import load_specs

    if not HAPROXY.exists():
        unavailable("haproxy not installed (/usr/sbin/haproxy; `.ci/run` installs Debian's haproxy)")
    with traversable_tmp_dir("replicas") as base:
        specs_dir = base / "specs"  # the spec alone: its training data (toy.csv) is on no serving host
        specs_dir.mkdir()
        (specs_dir / f"{MODEL}.yaml").write_text(
            textwrap.dedent(TOY_SPEC).replace("name: toy", f"name: {MODEL}")
            + "estimator:\n  class: sklearn.linear_model.Ridge\nrollout: {canary_percent: 30}\n")
        spec = load_specs(specs_dir, check_data=False)[0]
        rows = toy_rows(weeks=3, per_week=40)
        x, y = split_xy(rows, spec)
        tracker = Tracker(mlflow_server.tracking_uri, None)
        for version, alpha in (("1", 0.1), ("2", 10.0), ("3", 1000.0)):
            spec.estimator.params = {"alpha": alpha}
            logged = tracker.log_trained_model(MODEL, f"{MODEL}-{version}", build_pipeline(spec).fit(x, y),
                                               x.head(5), {"alpha": alpha}, {}, {}, {}, {"gates": "passed"})
            assert logged.version == version
        tracker.set_alias(MODEL, CHAMPION, "1")
        tracker.set_alias(MODEL, CHALLENGER, "2")
        log_uri = f"{s3_server.create_bucket('plog')}/prod"
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLPLATFORM_", "AWS_", "MLFLOW_"))
                and k not in ("HOME", "USER", "PYTHONPATH")}
        env = {**keep, **s3_server.client_env(), "MLPLATFORM_SPECS": str(specs_dir),
               "MLPLATFORM_MLFLOW_TRACKING_URI": mlflow_server.tracking_uri, PREDICTION_LOG_URI_ENV: log_uri,
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        yield {"base": base, "specs_dir": specs_dir, "tracker": tracker, "log_uri": log_uri, "env": env}


def move_champion(base: Path, tracker, version: str) -> None:
    """A person's approval through lib/promotion (audit row + alias move), as `mlplatform promote` does it."""
    from mlplatform.lib import promotion

    change = promotion.approval_change(tracker, MODEL, version, "test-operator", "replica swap check")
    with duckdb.connect(str(base / "operator-warehouse.duckdb")) as connection:
        promotion.commit_changes(connection, tracker, [change])


def test_two_replicas_behind_a_balancer_swap_route_alike_survive_sigterm_and_log_every_answer_once(
        world: dict, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    base: Path = world["base"]
    replicas = [start_replica(name, base, world["specs_dir"], world["env"]) for name in ("replica-a", "replica-b")]
    balancer: subprocess.Popen | None = None
    traffic: Traffic | None = None
    try:
        for replica in replicas:
            wait_for(lambda r=replica: http_ok(f"{r.url}/ready"), 180, f"{replica.name} /ready", replica.process,
                     base / f"{replica.name}.log")
        port = free_port()
        config = base / "haproxy.cfg"
        config.write_text(haproxy_config(port, replicas))
        check = subprocess.run([str(HAPROXY), "-c", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        balancer = spawn([str(HAPROXY), "-db", "-f", str(config)], base / "haproxy.log", dict(os.environ), base)
        traffic = Traffic(f"http://127.0.0.1:{port}")
        wait_for(lambda: http_ok(f"{traffic.url}/ready"), 30, "haproxy", balancer, base / "haproxy.log")

        # One entity, one role, whichever replica answers (routing hashes the entity key).
        roles: dict[str, dict[int, str]] = {}
        with httpx.Client(timeout=30) as http:
            for replica in replicas:
                roles[replica.name] = {e: traffic.send(http, f"direct-{replica.name}-{e}", e, replica.url)["role"]
                                       for e in range(40)}
        assert roles["replica-a"] == roles["replica-b"]
        assert set(roles["replica-a"].values()) == {CHAMPION_ROLE, CANARY_ROLE}

        # An alias move under traffic: no request fails, both replicas serve the new champion.
        traffic.start()
        time.sleep(1.5)
        moved_at = time.monotonic()
        move_champion(base, world["tracker"], "3")
        swapped: dict[str, float] = {}
        while len(swapped) < len(replicas):
            for replica in replicas:
                if replica.name not in swapped and replica.champion() == "3":
                    swapped[replica.name] = time.monotonic() - moved_at
            assert time.monotonic() - moved_at < 120, f"replicas did not swap: {swapped}"
            time.sleep(0.05)
        with httpx.Client(timeout=30) as http:
            champion_entity = next(e for e, role in roles["replica-a"].items() if role == CHAMPION_ROLE)
            for replica in replicas:
                answer = traffic.send(http, f"after-{replica.name}", champion_entity, replica.url)
                assert answer["version"] == "3" and answer["role"] == CHAMPION_ROLE
        time.sleep(1.0)
        metrics = httpx.get(f"{replicas[1].url}/metrics", timeout=5).text
        assert "mlplatform_prediction_log_spooled_segments " in metrics  # what to alert on when the bucket is down

        # SIGTERM one replica mid-traffic (its whole process group, the log writer too): no client sees it.
        os.killpg(replicas[0].process.pid, signal.SIGTERM)
        assert replicas[0].process.wait(timeout=90) in (0, -signal.SIGTERM)
        time.sleep(2.0)
        traffic.finish()
        assert traffic.failed == {}
        os.killpg(replicas[1].process.pid, signal.SIGTERM)
        assert replicas[1].process.wait(timeout=90) in (0, -signal.SIGTERM)
    finally:
        if traffic is not None:
            traffic.finish()
        if balancer is not None:
            stop_process(balancer)
        for replica in replicas:
            stop_process(replica.process)

    for name, value in world["env"].items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    # 0 lost, 0 extra rows: the bucket holds exactly the requests answered with 200, each once.
    answered = traffic.answered
    logged = read_prediction_log(tmp_path, MODEL, uri=world["log_uri"], roles=[CHAMPION_ROLE, CANARY_ROLE])
    assert sorted(logged["request_id"]) == sorted(answered)
    assert {(r, str(v)) for r, v in zip(logged["request_id"], logged["version"], strict=True)} == {
        (r, a["version"]) for r, a in answered.items()}
    # The week's drift and live-performance inputs: the same reader over the week's window, as the steps call it.
    first = min(logged["time"])
    week_start = datetime.combine((first - timedelta(days=first.weekday())).date(), datetime.min.time())
    week_end = week_start + timedelta(days=7)
    week = read_prediction_log(tmp_path / "step", MODEL, week_start, week_end, uri=world["log_uri"])
    answered_rows = week[week["role"].isin([CHAMPION_ROLE, CANARY_ROLE])]
    assert len(answered_rows) == int((logged["time"] < week_end).sum())  # all of them, unless run over a Monday
    keys = s3_server.keys("plog", "prod/")
    import mlflow  # for the report: one load of the new version through the artifact proxy, without traffic

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(world["tracker"].tracking_uri)
    started = time.monotonic()
    mlflow.sklearn.load_model(f"models:/{MODEL}/3")
    load_seconds = time.monotonic() - started
    for replica in replicas:
        assert any(f"/{replica.name}-" in key for key in keys)  # each replica's own keys
        assert list(spool_root(replica.home).rglob("*.parquet")) == []  # drained at SIGTERM
    with capsys.disabled():
        print(f"\nalias move -> both replicas answering v3 (poll {POLL_SECONDS:g} s): "
              + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in sorted(swapped.items()))
              + f" (one load of that version through the proxy, no traffic: {load_seconds:.2f} s)"
              + f"; requests answered {len(answered)}, failed {len(traffic.failed)}, log rows {len(logged)}, "
              f"objects {len(keys)}; replicas ran as "
              + (", ".join(r.user.name for r in replicas if r.user) or "the current user (not root)"))


def test_a_reader_that_cannot_list_the_bucket_gets_an_error_naming_the_log_and_the_settings(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlplatform.lib.prediction_log import PredictionLogUnavailable

    for name, value in s3_server.client_env().items():
        monkeypatch.setenv(name, value)
    with pytest.raises(PredictionLogUnavailable, match="s3://no-such-bucket/p/toy: cannot be read from object "
                       "storage .*NoSuchBucket.*check MLPLATFORM_PREDICTION_LOG_URI"):
        read_prediction_log(tmp_path, "toy", uri="s3://no-such-bucket/p")
