"""The prediction log's object keys and its reader's deduplication (pure logic and local files; the S3 round trip
is in test_services_serving.py)."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from mlplatform.lib.object_store import SegmentNamer, key_date, parse_log_uri, replica_id, spooled_segments
from mlplatform.lib.prediction_log import read_prediction_log, spool_root, write_segments


def test_object_keys_cannot_collide_between_replicas_restarts_or_segments(tmp_path):
    first, second = SegmentNamer("serving-7f9c-abcde"), SegmentNamer("serving-7f9c-fghij")
    restarted = SegmentNamer("serving-7f9c-abcde")  # the same pod name after a restart: a new writer token
    names = [namer() for namer in (first, second, restarted) for _ in range(3)]
    assert len(set(names)) == 9
    assert names[:3] == [f"serving-7f9c-abcde-{first.token}-{n:08d}" for n in (1, 2, 3)]
    location = parse_log_uri("s3://logs/team-a/prediction_log/")
    assert location.key("toy/date=2024-01-08/hour=13/x.parquet") == "team-a/prediction_log/toy/date=2024-01-08/hour=13/x.parquet"
    assert parse_log_uri("s3://logs").key("toy/a.parquet") == "toy/a.parquet"
    assert location.model_prefix("toy") == "team-a/prediction_log/toy/"
    assert key_date("p/toy/date=2024-01-08/hour=13/x.parquet") == date(2024, 1, 8)


def test_a_replica_id_is_made_safe_for_a_key_and_a_bad_uri_names_the_setting():
    assert replica_id("web 1/../pod:7") == "web_1_.._pod_7" and replica_id("serving-7f9c") == "serving-7f9c"
    assert replica_id("") != ""  # the host name
    for bad in ("/var/log", "s3://", "gs://bucket/x"):
        with pytest.raises(ValueError, match="MLPLATFORM_PREDICTION_LOG_URI"):
            parse_log_uri(bad)


def row(request: str, index: int, role: str, score: float, when: datetime) -> dict:
    return {"request_id": request, "record_index": index, "record_id": None, "time": when, "model": "toy",
            "version": "1", "role": role, "entity_key": "e", "label": "1", "score": score, "probabilities": None,
            "latency_ms": 1.0, "inputs": {"x1": 1.0}}


def test_the_reader_counts_a_row_written_twice_once_per_request_record_and_role(tmp_path):
    when = datetime(2024, 1, 8, 13, 0)
    rows = [row("r1", 0, "champion", 1.0, when), row("r1", 1, "champion", 2.0, when),
            row("r1", 0, "shadow", 9.0, when), row("r2", 0, "canary", 3.0, when)]
    root = tmp_path / "prediction_log"
    write_segments(root, rows)
    write_segments(root, rows[:3])  # a writer that died after publishing, before confirming, wrote them again
    logged = read_prediction_log(tmp_path, "toy")
    assert len(logged) == 4
    assert sorted(zip(logged["request_id"], logged["record_index"], logged["role"], logged["score"], strict=True)) == [
        ("r1", 0, "champion", 1.0), ("r1", 0, "shadow", 9.0), ("r1", 1, "champion", 2.0), ("r2", 0, "canary", 3.0)]
    assert len(read_prediction_log(tmp_path, "toy", roles=["champion"])) == 2


def test_spooled_segments_are_named_for_their_keys_and_partial_files_are_not_published(tmp_path):
    spool = spool_root(tmp_path)
    namer = SegmentNamer("pod-a", token="t0")
    write_segments(spool, [row("r1", 0, "champion", 1.0, datetime(2024, 1, 8, 13))], name=namer)
    (spool / "toy" / "date=2024-01-08" / "hour=13" / ".x.parquet.partial").write_bytes(b"half")
    assert [p.relative_to(spool).as_posix() for p in spooled_segments(spool)] == [
        "toy/date=2024-01-08/hour=13/pod-a-t0-00000001.parquet"]


def test_serve_refuses_a_log_uri_that_is_not_s3_naming_the_setting(home, monkeypatch, capsys):
    from mlplatform.cli import main

    monkeypatch.setenv("MLPLATFORM_PREDICTION_LOG_URI", "/mnt/shared/log")
    assert main(["serve", "--model", "car_loan"]) == 1
    error = capsys.readouterr().err
    assert "MLPLATFORM_PREDICTION_LOG_URI='/mnt/shared/log': expected s3://bucket/prefix" in error
    assert "nothing is served" in error
