"""MLflow as a tracking server (PostgreSQL backend, artifacts proxied into S3): a Dagster run logs and registers a
version through it, the CLI promotes and writes the card through it, and a serving process running as another Unix
user, with a private home, no AWS credentials and no access to the trainer's home, loads that version through the
server's artifact proxy and answers over HTTP. Everything goes through MLPLATFORM_MLFLOW_TRACKING_URI alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlplatform.lib.settings import SettingsError, is_local_artifact_location, load_settings
from mlplatform.lib.tracking import Tracker
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks
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
    wait_for,
)

pytestmark = pytest.mark.services

MODEL = "tracked_toy"  # its own experiment and registered model on the session's shared server
SPEC = TOY_SPEC.replace("name: toy", f"name: {MODEL}") + """
estimator:
  class: sklearn.linear_model.Ridge
gates:
  metric: rmse
rollout:
  approval: manual
"""
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE",
          "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


@pytest.fixture
def shared_specs() -> Iterator[Path]:
    """The spec folder, readable by every host user (what a serving image ships), outside anyone's home."""
    with traversable_tmp_dir("specs") as base:
        folder = base / "specs"
        folder.mkdir()
        (folder / f"{MODEL}.yaml").write_text(textwrap.dedent(SPEC))
        toy_rows().to_csv(folder / "toy.csv", index=False)
        for path in (folder, *folder.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield folder


@pytest.fixture
def tracking_server(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowServer:
    """This process tracks to the server with nothing else: no artifact setting, no S3 credentials."""
    for name in S3_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MLPLATFORM_MLFLOW_ARTIFACTS", raising=False)
    monkeypatch.setenv("MLPLATFORM_MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    return mlflow_server


def serve_as(user: HostUser | None, specs: Path, tracking_uri: str, base: Path, port: int) -> subprocess.Popen:
    """`mlplatform serve` as another host: its own home and state, the tracking URI, and nothing else."""
    home = user.home if user is not None else base / "serve-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "MLPLATFORM_HOME": str(home / "mlplatform"),
           "MLPLATFORM_SPECS": str(specs), "MLPLATFORM_MLFLOW_TRACKING_URI": tracking_uri, "HOME": str(home)}
    command = [sys.executable, "-m", "mlplatform.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--model", MODEL, "--poll-seconds", "1", "--log-level", "warning"]
    return spawn(command, base / "serve.log", env, cwd=home, user=user)


def test_a_version_registered_through_the_server_is_promoted_carded_and_served_by_another_user(
        home: Path, instance, shared_specs: Path, tracking_server: MlflowServer, s3_server: S3Server,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from mlplatform.cli import main

    monkeypatch.setenv("MLPLATFORM_SPECS", str(shared_specs))
    assert run_weeks(load_definitions(), MODEL, instance, "2024-01-01", "2024-01-15").success
    settings = load_settings()
    assert not settings.embedded_mlflow and settings.artifact_root is None
    assert not (home / "mlflow").exists() or not any((home / "mlflow").rglob("*.skops"))  # nothing local

    tracker = Tracker.for_settings(settings)
    [latest] = tracker.client.search_model_versions(f"name = '{MODEL}'", max_results=1,
                                                    order_by=["version_number DESC"])
    version = str(latest.version)
    assert tracker.alias_version(MODEL, "challenger") == version and tracker.alias_version(MODEL, "champion") is None
    assert not is_local_artifact_location(latest.source)  # e.g. models:/m-..., resolved by the server
    download = tracker.client.get_model_version_download_uri(MODEL, version)
    assert download.startswith("mlflow-artifacts:"), download  # through the server's proxy, not a path or s3://
    bucket = tracking_server.artifacts_destination.removeprefix("s3://").split("/")[0]
    assert any(key.endswith("model.skops") for key in s3_server.keys(bucket))  # the bytes are in object storage

    # the week's run is nested under the parent run dagster-mlflow's resource opened, and the hook ended it
    week_run = tracker.run(latest.run_id)
    parent = tracker.run(week_run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["dagster_run_id"] == week_run.data.tags["dagster.run_id"]
    assert parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")

    # the CLI through the server: promote (audit in the warehouse, alias on the server), rollback, reproduce, card
    earlier = str(int(version) - 1)  # two weeks trained: two versions
    assert main(["promote", MODEL, "--version", earlier, "--by", "alice", "--reason", "first review"]) == 0
    assert main(["promote", MODEL, "--by", "alice", "--reason", "reviewed through the tracking server"]) == 0
    assert f"champion v{earlier} -> v{version}" in capsys.readouterr().out
    assert tracker.alias_version(MODEL, "champion") == version
    assert main(["rollback", MODEL, "--by", "bob", "--reason", "rehearsal"]) == 0
    assert tracker.alias_version(MODEL, "champion") == earlier
    assert main(["promote", MODEL, "--version", version, "--by", "alice", "--reason", "back again"]) == 0
    capsys.readouterr()
    assert main(["reproduce", MODEL, version]) == 0  # retrained from the warehouse, compared with the server's
    assert "reproduced: identical metrics" in capsys.readouterr().out
    assert main(["card", MODEL]) == 0
    card = capsys.readouterr().out
    assert card.startswith("# Model card: ") and f" v{version}\n" in card

    with traversable_tmp_dir("serve") as base:
        user = host_user("serve", base)
        if user is not None:  # the trainer's home is not readable by the serving host
            denied = subprocess.run(["ls", str(home)], user=user.uid, group=user.gid, extra_groups=[],
                                    capture_output=True, text=True)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
        port = free_port()
        process = serve_as(user, shared_specs, tracking_server.tracking_uri, base, port)
        try:
            wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 120, "mlplatform serve", process,
                     base / "serve.log")
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/models/{MODEL}/predict", timeout=30,
                                json={"records": [{"id": 1, "x1": 2.0, "x2": 0.5, "color": "red"}]})
            assert answer.status_code == 200, answer.text
            [prediction] = answer.json()["predictions"]
            assert prediction["version"] == version and abs(prediction["prediction"] - 4.5) < 1.0
        finally:
            stop_process(process)
        log = (base / "serve.log").read_text(errors="replace")
        assert "NoCredentialsError" not in log and "Traceback" not in log, log[-3000:]
    if user is None:
        pytest.skip("served as the same Unix user (not root): the other-user half was not exercised")


def test_an_experiment_with_a_local_artifact_location_is_refused_on_a_tracking_server(
        tracking_server: MlflowServer, tmp_path: Path) -> None:
    """A server started without proxied artifacts (or an experiment made by hand) hands out local paths: the
    platform refuses them with the reason instead of writing artifacts other machines cannot read."""
    tracker = Tracker.for_settings(load_settings())
    tracker.client.create_experiment("local_artifacts", artifact_location=str(tmp_path / "artifacts"))
    with pytest.raises(SettingsError, match="a path on this machine's disk") as refused:
        tracker.experiment_id("local_artifacts")
    assert "--artifacts-destination" in str(refused.value) and tracking_server.tracking_uri in str(refused.value)
