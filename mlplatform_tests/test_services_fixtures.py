"""The shared-service fixtures themselves: each server answers, and the MLflow server keeps artifacts in S3."""

from __future__ import annotations

import mlflow
import pytest

from mlplatform_tests.services import MlflowServer, PostgresServer, S3Server

pytestmark = pytest.mark.services


def test_postgres_answers_and_creates_databases(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("fixture_check")
    assert postgres_server.psql("select 40 + 2", database="fixture_check").strip() == "42"
    assert postgres_server.psql("show server_version_num").strip().startswith("15")


def test_mlflow_server_proxies_artifacts_into_s3(mlflow_server: MlflowServer, s3_server: S3Server,
                                                 tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client with only the tracking URI (no S3 credentials) logs an artifact that lands in the bucket."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    artifact = tmp_path / "note.txt"
    artifact.write_text("kept in object storage")
    mlflow.set_experiment("fixture-check")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(artifact))
    bucket = mlflow_server.artifacts_destination.removeprefix("s3://").split("/")[0]
    assert any(key.endswith(f"{run.info.run_id}/artifacts/note.txt") for key in s3_server.keys(bucket))
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="note.txt",
                                                dst_path=str(tmp_path / "back"))
    assert open(local).read() == "kept in object storage"
