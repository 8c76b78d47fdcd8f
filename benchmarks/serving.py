"""Prediction speed: `mlplatform serve` against `mlflow models serve`, same model, same load generator.

The model is the bundled car_loan spec's pipeline (HistGradientBoostingClassifier, max_iter 100) trained on the 8
weeks before 2019-01-07 and registered through ``Tracker`` in a temp MLPLATFORM_HOME, gates ``passed``, alias
``champion`` (what `mlplatform demo` + promote would give, without the ~minutes of the whole lifecycle). Both servers
load that same registered version:

  mlflow:       mlflow models serve -m models:/car_loan/1 --env-manager local  (POST /invocations, dataframe_records)
  mlflow OMP=1: the same with OMP_NUM_THREADS=1 (HistGradientBoosting's OpenMP threads cost more than they give
                on small requests; mlplatform limits its predict thread the same way, so this is the fair baseline)
  mlplatform:   mlplatform serve --model car_loan, prediction log ON          (POST /v1/models/car_loan/predict)
  mlplatform S3 log: the same with MLPLATFORM_PREDICTION_LOG_URI=s3://... on a local moto S3 server started by the
                benchmark (spool + upload of every segment in the log writer's child process); the table adds its
                rps ratio to the local-log figure
  floor:        a trivial ASGI app answering a constant JSON under the same uvicorn settings (httptools, uvloop,
                no access log): what this machine and wrk allow at best, measured in the same run. If even the
                floor's p99 were above a target, the target would be out of reach on the machine at that moment.

Bodies carry the 7 features only (no key), for every side.
Load: wrk (``apt-get install wrk``; not a Python dependency, not run by CI) with a Lua POST script, one wrk thread
pinned to CPU 1 with taskset; the servers are not pinned (they share both cores with wrk: on 2 cores the generator
always competes, and it competes the same way for both). Each scenario gets a freshly started server. Scenarios: 1-row requests at concurrency 1, 8 and 32;
100-row requests at concurrency 8. Each scenario: a 2 s warm-up, then ``--seconds`` measured. Prints rps, p50,
p99 (wrk's --latency, timeout 5 s) for each side, the rps ratio of mlplatform to the better mlflow, and the CPU time
the server's processes used per request (from /proc: robust to other load on the machine, unlike rps).

``--sigkill`` instead measures what SIGKILL loses from the prediction log: it loads `mlplatform serve` (flush
interval ``--flush-seconds``) with 1-row requests carrying their own request ids, kills the process, and reports how
many answered predictions are missing from the log and how long before the kill the oldest of them was answered.

    apt-get install wrk
    uptime   # other load on 2 cores moves p99 a lot: note the load average with the numbers
    python benchmarks/serving.py [--seconds 10] [--sides floor,mlplatform] [--scenario "1 row, c=8"] [--sigkill]
    python benchmarks/serving.py --sides "mlplatform,mlplatform S3 log"   # the log on object storage vs local
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from mlplatform.lib.settings import BUNDLED_SPECS_DIR

SCENARIOS = [("1 row, c=1", 1, 1), ("1 row, c=8", 1, 8), ("1 row, c=32", 1, 32), ("100 rows, c=8", 100, 8)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_home(home: Path) -> list[dict]:
    """Train and register the car_loan champion in ``home``; return feature records of the week after training."""
    os.environ["MLPLATFORM_HOME"] = str(home)
    os.environ["MLPLATFORM_SPECS"] = str(BUNDLED_SPECS_DIR)
    from mlplatform.lib.source import Window, read_source, rows_in_window, to_utc_naive
    from mlplatform.lib.tracking import CHAMPION, Tracker
    from mlplatform.lib.training import build_pipeline, split_xy
    from mlplatform.lib.validation import to_features_frame
    from mlplatform.specs import load_spec_file

    spec, problems = load_spec_file(BUNDLED_SPECS_DIR / "car_loan.yaml")
    assert spec is not None and not problems, problems
    raw = read_source(spec.source_path)
    raw[spec.time_column] = to_utc_naive(raw[spec.time_column], spec.source.timezone)
    import pandas as pd

    train = to_features_frame(rows_in_window(raw, spec.time_column, Window(pd.Timestamp("2018-11-12").to_pydatetime(),
                                                                           pd.Timestamp("2019-01-07").to_pydatetime())),
                              spec)
    week = to_features_frame(rows_in_window(raw, spec.time_column, Window(pd.Timestamp("2019-01-07").to_pydatetime(),
                                                                          pd.Timestamp("2019-01-14").to_pydatetime())),
                             spec)
    x, y = split_xy(train, spec)
    pipeline = build_pipeline(spec).fit(x, y)
    tracker = Tracker.under(home / "mlflow")
    logged = tracker.log_trained_model("car_loan", "bench", pipeline, x.head(5), {}, {}, {}, {}, {"gates": "passed"})
    tracker.set_alias("car_loan", CHAMPION, logged.version)
    columns = [*spec.source.key, *spec.feature_columns]
    plain = week[columns].astype(object).where(week[columns].notna(), None)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in plain.to_dict("records")]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stdout.read() if process.stdout else ''}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def start_mlflow(home: Path, port: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **(extra_env or {}), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # it execs `uvicorn`
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/car_loan/1", "--env-manager",
               "local", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/ping", process)
    return process


def start_mlplatform(home: Path, port: int, flush_seconds: float = 1.0,
                     extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **(extra_env or {}), "MLPLATFORM_HOME": str(home), "MLPLATFORM_SPECS": str(BUNDLED_SPECS_DIR)}
    command = [sys.executable, "-m", "mlplatform.cli", "serve", "--model", "car_loan", "--port", str(port),
               "--flush-seconds", str(flush_seconds), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/ready", process)
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def cpu_seconds(process_group: int) -> float:
    """CPU time (user + system) of every live process in a process group: the server's whole cost."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == process_group:  # fields after the name: state, ppid, pgrp, ...
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def wrk(url: str, body: str, connections: int, seconds: int, folder: Path, process_group: int) -> dict[str, float]:
    script = folder / "post.lua"
    script.write_text(LUA.format(body=body))
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
               "--latency", "-s", str(script), url]
    cpu_before = cpu_seconds(process_group)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(process_group) - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50": latency.get("50", float("nan")), "p99": latency.get("99", float("nan")),
            "cpu_ms": cpu * 1000 / max(requests, 1), "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "socket_errors": errors.group(0) if errors else ""}


async def floor_app(scope, receive, send) -> None:
    """The floor: an ASGI app that reads the body and answers a constant JSON, under the same uvicorn settings as
    `mlplatform serve` (httptools, uvloop, no access log) and the same wrk command. No server can answer faster
    on this machine with this load generator, so its p99 bounds what any of ours can reach."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    body = b'{"predictions":[{"prediction":1.0}]}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def start_floor(home: Path, port: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    from mlplatform.serving.server import uvicorn_choices

    choices = uvicorn_choices()
    command = [sys.executable, "-m", "uvicorn", "serving:floor_app", "--app-dir", str(Path(__file__).parent),
               "--host", "127.0.0.1", "--port", str(port), "--http", choices["http"], "--loop", choices["loop"],
               "--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, env={**os.environ, **(extra_env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/", process)
    return process


S3_LOG = "mlplatform S3 log"
SIDES = {
    "floor": ("floor", {}),
    "mlflow": ("mlflow", {}),
    "mlflow OMP=1": ("mlflow", {"OMP_NUM_THREADS": "1"}),
    "mlplatform": ("mlplatform", {}),
    S3_LOG: ("mlplatform", {}),  # + the S3 server's environment (s3_log_env)
}
"""The floor (a constant answer, no model); mlflow as it comes, and with OpenMP limited to one thread (what
mlplatform does inside), so the comparison is not only about that one setting; mlplatform, with the prediction log
in a local folder and on object storage."""


@contextmanager
def s3_log_env(folder: Path) -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback with a bucket; yields what `mlplatform serve` needs to log there."""
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        sys.exit("moto_server is not installed (moto[server] is a dev dependency: python3 dev.py install)")
    port = free_port()
    log = (folder / "moto.log").open("wb")
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "MLPLATFORM_PREDICTION_LOG_URI": "s3://bench-log/serving"}
    try:
        wait_ready(f"http://127.0.0.1:{port}/moto-api/", process)
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="bench",
                     aws_secret_access_key="bench-secret", region_name="us-east-1").create_bucket(Bucket="bench-log")
        yield env
    finally:
        stop(process)
        log.close()


def uploaded_objects(env: dict[str, str]) -> int:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="bench",
                          aws_secret_access_key="bench-secret", region_name="us-east-1")
    return sum(page.get("KeyCount", 0) for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench-log"))

STARTERS = {"floor": start_floor, "mlflow": start_mlflow, "mlplatform": start_mlplatform}


def benchmark(seconds: int, sides: list[str], scenarios: list[str] | None = None) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    chosen = [s for s in SCENARIOS if not scenarios or s[0] in scenarios]
    with tempfile.TemporaryDirectory() as folder, \
            (s3_log_env(Path(folder)) if S3_LOG in sides else _no_env()) as s3_env:
        home = Path(folder) / "home"
        records = [{k: v for k, v in r.items() if k != "id"} for r in build_home(home)]  # the features only
        results: dict[str, dict[str, dict[str, float]]] = {}
        print(f"load average at the start: {os.getloadavg()[0]:.1f}", flush=True)
        for side in sides:
            server, extra_env = SIDES[side]
            extra_env = {**extra_env, **(s3_env if side == S3_LOG else {})}
            for name, rows, connections in chosen:
                # A fresh server per scenario: an overloaded one may still be working off the previous backlog.
                port = free_port()
                process = STARTERS[server](home, port, extra_env=extra_env)
                base = f"http://127.0.0.1:{port}"
                url = {"mlflow": f"{base}/invocations", "floor": f"{base}/"}.get(server,
                                                                                  f"{base}/v1/models/car_loan/predict")
                body = json.dumps({"dataframe_records" if server == "mlflow" else "records": records[:rows]})
                try:
                    check = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
                    assert check.status_code == 200, check.text
                    wrk(url, body, connections, 2, Path(folder), process.pid)  # warm-up
                    result = wrk(url, body, connections, seconds, Path(folder), process.pid)
                except (httpx.HTTPError, subprocess.CalledProcessError, AttributeError) as error:
                    result = {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "cpu_ms": float("nan"),
                              "error": f"{type(error).__name__}: {error}"}
                finally:
                    stop(process)
                results.setdefault(name, {})[side] = result
                print(f"{side:<13} {name:<14} {result} (load average {os.getloadavg()[0]:.1f})", flush=True)
        print()
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}; wrk -t1 --timeout 5s pinned to CPU 1, {seconds} s per scenario")
        columns = [s for s in SIDES if s in sides]
        print("| scenario | " + " | ".join(f"{s} rps" for s in columns) + " | mlplatform / best mlflow | "
              + " | ".join(f"{s} p50 / p99 ms" for s in columns) + " | server CPU ms per request ("
              + " / ".join(columns) + ") |")
        print("|---|" + "---:|" * (2 * len(columns) + 2))
        missing = {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "cpu_ms": float("nan")}
        for name, _, _ in chosen:
            got = {s: results[name].get(s, missing) for s in columns}
            best = max((got[s]["rps"] for s in columns if s.startswith("mlflow")), default=0.0)
            ratio = f"{got['mlplatform']['rps'] / best:.1f}x" if best and "mlplatform" in got else "n/a"
            print(f"| {name} | " + " | ".join(f"{got[s]['rps']:.0f}" for s in columns) + f" | {ratio} | "
                  + " | ".join(f"{got[s]['p50']:.1f} / {got[s]['p99']:.1f}" for s in columns) + " | "
                  + " / ".join(f"{got[s]['cpu_ms']:.2f}" for s in columns) + " |")
        if S3_LOG in columns and "mlplatform" in columns:
            print(f"\nprediction log on object storage ({uploaded_objects(s3_env)} objects uploaded) / local log:")
            for name, _, _ in chosen:
                local, s3 = results[name].get("mlplatform", missing), results[name].get(S3_LOG, missing)
                print(f"  {name:<14} rps {s3['rps'] / max(local['rps'], 1e-9):.2f}, p99 "
                      f"{s3['p99'] / local['p99']:.2f}, server CPU per request {s3['cpu_ms'] / local['cpu_ms']:.2f}")


@contextmanager
def _no_env() -> Iterator[dict[str, str]]:
    yield {}


def sigkill_loss(seconds: float, flush_seconds: float) -> None:
    """Answered predictions missing from the log after SIGKILL, and how long before the kill they were answered."""
    from mlplatform.lib.prediction_log import read_prediction_log

    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        records = build_home(home)
        port = free_port()
        process = start_mlplatform(home, port, flush_seconds)
        answered: dict[str, float] = {}
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def client(n: int) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                i = 0
                while time.monotonic() < stop_at + 5:
                    request_id = f"k{n}-{i}"
                    i += 1
                    try:
                        response = http.post("/v1/models/car_loan/predict", headers={"X-Request-ID": request_id},
                                             json={"records": [records[i % len(records)]]})
                    except httpx.HTTPError:
                        return
                    if response.status_code == 200:
                        with lock:
                            answered[request_id] = time.monotonic()

        clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(seconds)
        os.killpg(process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        for thread in clients:
            thread.join()
        logged = set(read_prediction_log(home, "car_loan", expand_inputs=False)["request_id"])
        lost = {rid: t for rid, t in answered.items() if rid not in logged}
        oldest = max((killed_at - t for t in lost.values()), default=0.0)
        print(f"flush interval {flush_seconds} s: {len(answered)} answered, {len(logged)} logged, {len(lost)} lost "
              f"({len(lost) / max(len(answered), 1):.1%}); the oldest lost answer was {oldest:.2f} s before SIGKILL; "
              f"logged but not answered: {len(logged - set(answered))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per scenario (default 10)")
    parser.add_argument("--sigkill", action="store_true", help="measure the prediction log's loss on SIGKILL instead")
    parser.add_argument("--flush-seconds", type=float, default=1.0)
    parser.add_argument("--sides", default=",".join(SIDES),
                        help=f"comma-separated, of {', '.join(SIDES)} (default: all)")
    parser.add_argument("--scenario", action="append", choices=[s[0] for s in SCENARIOS],
                        help="only this scenario (repeatable; default: all)")
    args = parser.parse_args()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        parser.error(f"unknown sides {unknown}; choose from {', '.join(SIDES)}")
    if args.sigkill:
        sigkill_loss(max(args.seconds, 3), args.flush_seconds)
    else:
        benchmark(args.seconds, sides, args.scenario)


if __name__ == "__main__":
    main()
