"""The demo's production: serve every champion, replay the last weeks as traffic, and read what the log holds.

Used by ``mlplatform demo`` after the pipeline runs, so a newcomer sees the whole path: registry -> REST
service -> prediction log. The service is the real one (``mlplatform serve`` in a subprocess on a free
loopback port), stopped with SIGTERM so it flushes its log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import httpx

from mlplatform.lib.prediction_log import read_prediction_log
from mlplatform.lib.settings import Settings
from mlplatform.specs import ModelSpec

READY_SECONDS = 120.0


@dataclass
class ProductionSummary:
    model: str
    served: bool
    note: str = ""
    weeks: tuple[str, str] | None = None
    sent: int = 0
    answered: int = 0
    log_rows: dict[tuple[str, str], int] = field(default_factory=dict)  # (version, role) -> rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replay_last_weeks(settings: Settings, specs: list[ModelSpec], champions: dict[str, str | None],
                      last_weeks: dict[str, str], weeks: int = 2) -> list[ProductionSummary]:
    """Serve the models that have a champion, send each one's last ``weeks`` weeks, then summarise the log."""
    from mlplatform.serving.replay import feature_rows, records_of, replay_window, send

    summaries = {spec.name: ProductionSummary(spec.name, served=bool(champions.get(spec.name))) for spec in specs}
    for summary in summaries.values():
        if not summary.served:
            summary.note = "not served: no champion yet"
    served = [spec for spec in specs if summaries[spec.name].served and spec.name in last_weeks]
    if not served:
        return list(summaries.values())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlplatform.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    for spec in served:
        command += ["--model", spec.name]
    log_file = settings.home / "serve-demo.log"
    with log_file.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        _wait_ready(url, process, log_file)
        for spec in served:
            last = date.fromisoformat(last_weeks[spec.name])
            first = last - timedelta(weeks=weeks - 1)
            window = replay_window(first, weeks)
            result = send(records_of(feature_rows(spec, window, settings.warehouse_path), spec), url, spec.name)
            summary = summaries[spec.name]
            summary.weeks = (first.isoformat(), last.isoformat())
            summary.sent, summary.answered = result.sent, result.answered
            if result.errors:
                summary.note = f"{len(result.errors)} errors, first: {result.errors[0]}"
    finally:
        process.send_signal(signal.SIGTERM)  # the service flushes its prediction log on SIGTERM
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for spec in served:
        logged = read_prediction_log(settings.home, spec.name, expand_inputs=False)
        if len(logged):
            counts = logged.groupby(["version", "role"]).size()
            summaries[spec.name].log_rows = {(str(v), str(r)): int(n) for (v, r), n in counts.items()}
    return list(summaries.values())


def _wait_ready(url: str, process: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service stopped before it was ready; its log: {log_file}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the service was not ready after {READY_SECONDS:g} s; its log: {log_file}")


def summary_lines(summaries: list[ProductionSummary]) -> list[str]:
    """What production did, per model: what was replayed and what the prediction log holds by version and role."""
    lines = []
    for s in summaries:
        if not s.served or s.weeks is None:
            lines.append(f"== {s.model} in production: {s.note or 'not served'}")
            continue
        logged = ", ".join(f"v{version} {role} {rows}" for (version, role), rows in sorted(s.log_rows.items()))
        lines.append(f"== {s.model} in production: replayed weeks {s.weeks[0]}..{s.weeks[1]} through the REST service: "
                     f"{s.sent} rows sent, {s.answered} answered; prediction log: {logged or 'empty'}"
                     + (f" ({s.note})" if s.note else ""))
    return lines
