"""The prediction log's manifest: every segment a writer publishes is sealed, and `mlplatform audit MODEL --verify-log`
names a deleted, truncated, edited or unlisted segment (exit 1); an untouched log verifies (exit 0). Real files."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mlplatform.cli import main
from mlplatform.lib.audit_key import AUDIT_KEY_ENV
from mlplatform.lib.log_manifest import MANIFEST_DIR_NAME, _entry_hash
from mlplatform.lib.prediction_log import ChildProcessLogWriter, PredictionLogWriter, read_prediction_log
from mlplatform_tests.test_prediction_log import TYPES, row

KEY = "k" * 32


def _write_log(home: Path, flushes: int = 4) -> list[Path]:
    """Four segments of one writer (one flush per hour), oldest first."""
    writer = PredictionLogWriter(home, flush_seconds=3600, input_types=TYPES)
    start = datetime(2026, 3, 2, 9, 0)
    for hour in range(flushes):
        writer.write([row(10 * hour + i, start + timedelta(hours=hour, seconds=i)) for i in range(3)])
        writer.flush()
    writer.close()
    return sorted((home / "prediction_log" / "toy").rglob("*.parquet"))


@pytest.fixture
def log(home: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    monkeypatch.setenv(AUDIT_KEY_ENV, KEY)
    return _write_log(home)


def _verify_log(capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["audit", "toy", "--verify-log"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _named(segment: Path) -> str:
    return segment.relative_to(segment.parents[2]).as_posix()  # date=.../hour=.../<name>.parquet


def test_an_untouched_log_verifies_and_each_segment_is_sealed_with_the_key(log, home, capsys):
    code, out, err = _verify_log(capsys)
    assert code == 0, err
    assert "is intact (4 segments, 12 rows, manifest verified)" in out
    entries = sorted((home / "prediction_log" / "toy" / MANIFEST_DIR_NAME).rglob("*.json"))
    assert len(entries) == 4 and all(json.loads(e.read_text())["scheme"].startswith("hmac-sha256:") for e in entries)
    assert len(read_prediction_log(home, "toy")) == 12  # readers do not see the manifest


def test_a_deleted_segment_is_named(log, capsys):
    log[1].unlink()
    code, _, err = _verify_log(capsys)
    assert code == 1 and f"segment {_named(log[1])} (3 rows" in err and "is missing: deleted" in err


def test_a_truncated_segment_is_named(log, capsys):
    data = log[2].read_bytes()
    log[2].write_bytes(data[: len(data) // 2])
    code, _, err = _verify_log(capsys)
    assert code == 1 and f"segment {_named(log[2])} is truncated" in err


def test_an_edited_segment_is_named(log, capsys):
    data = bytearray(log[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    log[0].write_bytes(bytes(data))
    code, _, err = _verify_log(capsys)
    assert code == 1 and f"segment {_named(log[0])} was edited" in err


def test_rewritten_scores_with_a_recomputed_manifest_entry_are_caught_without_the_key(log, home, capsys):
    table = pq.read_table(log[3])
    pq.write_table(table.set_column(table.schema.get_field_index("score"), "score",
                                    [[0.0] * table.num_rows]), log[3])
    code, _, err = _verify_log(capsys)
    assert code == 1 and _named(log[3]) in err
    # the forger recomputes the entry (size, SHA-256, hash) without the key
    entry_path = sorted((home / "prediction_log" / "toy" / MANIFEST_DIR_NAME).rglob("*.json"))[3]
    entry = json.loads(entry_path.read_text())
    data = log[3].read_bytes()
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    entry["hash"] = _entry_hash(entry, None)
    entry_path.write_text(json.dumps(entry))
    code, _, err = _verify_log(capsys)
    assert code == 1 and "was edited" in err and "forged without the audit key" in err


def test_a_segment_deleted_with_its_manifest_entry_and_an_added_segment_are_named(log, home, capsys):
    entries = sorted((home / "prediction_log" / "toy" / MANIFEST_DIR_NAME).rglob("*.json"))
    log[1].unlink()
    entries[1].unlink()
    forged = log[0].with_name("forged.parquet")
    shutil.copy(log[0], forged)
    code, _, err = _verify_log(capsys)
    assert code == 1 and "manifest entry 2 missing" in err
    assert f"segment {_named(forged)} is in no manifest" in err


def test_the_newest_segments_deleted_with_their_entries_are_caught_by_the_checkpoint(log, home, capsys):
    """The chain alone stays valid when its newest entries go with their segments; the writer's checkpoint file
    (outside the log, signed with the key) says how far it reached."""
    entries = sorted((home / "prediction_log" / "toy" / MANIFEST_DIR_NAME).rglob("*.json"))
    [checkpoint] = (home / "audit_checkpoints" / "prediction_log" / "toy").glob("*.json")
    assert json.loads(checkpoint.read_text())["seq"] == 4 and "mac" in json.loads(checkpoint.read_text())
    code, out, _ = _verify_log(capsys)
    assert code == 0 and "1 writer chain(s), 1 anchored by a checkpoint file" in out
    for number in (2, 3):
        log[number].unlink()
        entries[number].unlink()
    code, _, err = _verify_log(capsys)
    assert code == 1 and "manifest entries 3..4 deleted with their segments (the newest)" in err
    assert f"the checkpoint of writer {checkpoint.stem} says the chain reached entry 4, the log holds 2" in err

    value = json.loads(checkpoint.read_text())  # rolled back to the shorter chain without the key: refused
    checkpoint.write_text(json.dumps({**value, "seq": 2, "hash": json.loads(entries[1].read_text())["hash"]}))
    code, _, err = _verify_log(capsys)
    assert code == 1 and "(entry 2) does not carry a valid signature of the audit key" in err


def test_a_deleted_manifest_or_a_deleted_log_is_caught_by_the_checkpoint(log, home, capsys):
    manifest = home / "prediction_log" / "toy" / MANIFEST_DIR_NAME
    shutil.rmtree(manifest)
    code, _, err = _verify_log(capsys)
    assert code == 1 and "its whole manifest chain is gone" in err and "is in no manifest" in err
    shutil.rmtree(home / "prediction_log" / "toy")  # the whole log: the checkpoint still says it existed
    code, _, err = _verify_log(capsys)
    assert code == 1 and "its whole manifest chain is gone: the checkpoint of writer" in err
    assert "says it sealed 4 segment(s)" in err


def test_no_log_is_not_intact(home, capsys):
    code, _, err = _verify_log(capsys)
    assert code == 1 and "no prediction log to verify" in err


def test_an_unkeyed_log_verifies_and_says_so(home, capsys, monkeypatch):
    monkeypatch.delenv(AUDIT_KEY_ENV, raising=False)
    _write_log(home, flushes=2)
    code, out, _ = _verify_log(capsys)
    assert code == 0 and "2 segments" in out and "sealed without a key" in out
    monkeypatch.setenv(AUDIT_KEY_ENV, KEY)  # keying later: the older, unkeyed chain still verifies, with the note
    _write_log(home, flushes=1)
    code, out, _ = _verify_log(capsys)
    assert code == 0 and "3 segments" in out and "1 writer(s) sealed without a key" in out


def test_the_child_process_writer_seals_its_segments_too(home, capsys, monkeypatch):
    monkeypatch.setenv(AUDIT_KEY_ENV, KEY)
    writer = ChildProcessLogWriter(home, flush_seconds=3600, input_types=TYPES).start()
    assert writer.child_pid is not None
    writer.write([row(i, datetime(2026, 3, 2, 9, 0, i)) for i in range(4)])
    writer.flush()
    writer.close()
    code, out, err = _verify_log(capsys)
    assert code == 0 and "1 segments, 4 rows" in out, err


@pytest.mark.services
def test_verify_log_reads_the_bucket_of_an_object_storage_log(s3_server, tmp_path, monkeypatch, capsys):
    """Replicas spool, seal and upload segments and entries; the verify reads the bucket afresh (not the cache)."""
    for name, value in s3_server.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(AUDIT_KEY_ENV, KEY)
    uri = f"{s3_server.create_bucket('plog-verify')}/unit"
    for replica in ("pod-a", "pod-b"):
        writer = PredictionLogWriter(tmp_path / replica, flush_seconds=3600, input_types=TYPES, uri=uri,
                                     replica=replica)
        writer.write([row(i, datetime(2026, 3, 2, 9, 0, i)) for i in range(4)])
        writer.close()
    monkeypatch.setenv("MLPLATFORM_PREDICTION_LOG_URI", uri)
    monkeypatch.setenv("MLPLATFORM_HOME", str(tmp_path / "reader"))
    code, out, err = _verify_log(capsys)
    assert code == 0 and "s3://plog-verify/unit/toy/" in out and "intact (2 segments, 8 rows" in out, err
    assert len(read_prediction_log(tmp_path / "reader", "toy")) == 4  # the cache now holds the segments

    segment = next(k for k in s3_server.keys("plog-verify", "unit/") if "/pod-b-" in k and k.endswith(".parquet"))
    client = s3_server.client()
    body = bytearray(client.get_object(Bucket="plog-verify", Key=segment)["Body"].read())
    body[len(body) // 2] ^= 0xFF  # same size: a stale cached copy would hide it
    client.put_object(Bucket="plog-verify", Key=segment, Body=bytes(body))
    code, _, err = _verify_log(capsys)
    assert code == 1 and f"segment {segment.removeprefix('unit/toy/')} was edited" in err
    client.delete_object(Bucket="plog-verify", Key=segment)
    code, _, err = _verify_log(capsys)
    assert code == 1 and "is missing: deleted" in err
