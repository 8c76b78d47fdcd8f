"""The prediction log writer/reader and the canary hash: pure, fast, on real files."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import pytest

from mlplatform.lib.prediction_log import (
    ChildProcessLogWriter,
    PredictionLogWriter,
    _send,
    _start_child,
    read_prediction_log,
    write_segments,
)
from mlplatform.lib.routing import CANARY_ROLE, CHAMPION_ROLE, bucket, entity_key, role_for, routing_key


def row(i: int, when: datetime, role: str = "champion", model: str = "toy") -> dict:
    return {"request_id": f"req{i // 2}", "record_index": i % 2, "record_id": None, "time": when, "model": model,
            "version": "3", "role": role, "entity_key": str(i), "inputs": {"x1": float(i), "color": "red", "x2": None},
            "score": i * 2.0, "label": str(i * 2.0), "probabilities": None, "latency_ms": 1.5}

TYPES = {"toy": {"x1": "float64", "x2": "float64", "color": "string"}}


def test_rows_written_by_the_thread_come_back_in_order_with_inputs_as_columns(tmp_path):
    start = datetime(2026, 11, 30, 9, 59, 58)
    writer = PredictionLogWriter(tmp_path, flush_seconds=0.05, input_types=TYPES).start()
    writer.write([row(i, start + timedelta(seconds=i)) for i in range(6)])  # crosses the 10:00 hour boundary
    writer.close()
    assert writer.backlog == 0 and writer.written_rows == 6
    hours = sorted(p.parent.name for p in (tmp_path / "prediction_log" / "toy").rglob("*.parquet"))
    assert hours == ["hour=09", "hour=10"]
    frame = read_prediction_log(tmp_path, "toy")
    assert list(frame["entity_key"]) == [str(i) for i in range(6)]
    assert list(frame["x1"]) == [float(i) for i in range(6)]
    assert frame["x2"].isna().all() and frame["x2"].dtype == "float64" and set(frame["color"]) == {"red"}
    assert frame["time"].iloc[0] == start and frame["time"].dt.tz is None
    assert not list((tmp_path / "prediction_log").rglob("*.partial"))


def test_time_and_role_filters_and_duckdb_reads_the_same_files(tmp_path):
    start = datetime(2026, 1, 1, 23, 0)
    rows = [row(i, start + timedelta(minutes=30 * i), role="shadow" if i % 3 == 0 else "champion") for i in range(10)]
    write_segments(tmp_path / "prediction_log", rows)
    window = read_prediction_log(tmp_path, "toy", start="2026-01-02 00:00", end=datetime(2026, 1, 2, 2, 0))
    assert list(window["entity_key"]) == ["2", "3", "4", "5"]
    served = read_prediction_log(tmp_path, "toy", roles=["champion", "canary"], expand_inputs=False)
    assert len(served) == 6 and "x1" not in served.columns
    aware = read_prediction_log(tmp_path, "toy", start="2026-01-02T01:00:00+01:00")
    assert aware["time"].min() == datetime(2026, 1, 2, 0, 0)
    pattern = str(tmp_path / "prediction_log" / "toy" / "**" / "*.parquet")
    with duckdb.connect() as connection:
        count = connection.execute("select count(*) from read_parquet(?, hive_partitioning=true)", [pattern]).fetchone()[0]
    assert count == 10


def test_the_version_and_column_filters_give_the_full_reads_rows_of_those_versions_with_those_columns(tmp_path):
    start = datetime(2026, 1, 1, 23, 0)
    rows = [{**row(i, start + timedelta(minutes=20 * i)), "version": str(i % 3)} for i in range(12)]
    rows[5]["status"] = 500  # an error row of v2: left out, as without the filter
    write_segments(tmp_path / "prediction_log", rows, TYPES)
    write_segments(tmp_path / "prediction_log", rows[4:6], TYPES)  # written twice: counted once
    full = read_prediction_log(tmp_path, "toy")
    only = read_prediction_log(tmp_path, "toy", versions=["2"], columns=["entity_key", "version", "x1", "nothing"])
    assert list(only.columns) == ["version", "entity_key", "x1"]  # in the log's order
    assert list(only["entity_key"]) == ["2", "8", "11"]
    expected = full.loc[full["version"] == "2", ["version", "entity_key", "x1"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(only, expected)
    assert list(read_prediction_log(tmp_path, "toy", versions=["1", "2"])["version"]) == \
        [v for v in full["version"] if v in ("1", "2")]
    assert read_prediction_log(tmp_path, "toy", versions=[]).empty
    assert list(read_prediction_log(tmp_path, "nothing", columns=["version", "x1"]).columns) == ["version"]
    with pytest.raises(ValueError, match="none of"):
        read_prediction_log(tmp_path, "toy", columns=["nothing"])


def test_an_unknown_model_reads_as_an_empty_frame_with_the_log_columns(tmp_path):
    frame = read_prediction_log(tmp_path, "nothing")
    assert frame.empty and {"request_id", "time", "version", "role", "label", "score"} <= set(frame.columns)


def test_a_feature_named_like_a_log_column_is_prefixed(tmp_path):
    record = row(0, datetime(2026, 1, 1))
    record["inputs"] = {"version": 2.0, "x1": 1.0}
    write_segments(tmp_path / "prediction_log", [record])
    frame = read_prediction_log(tmp_path, "toy")
    assert frame["version"].iloc[0] == "3" and frame["input.version"].iloc[0] == 2.0 and frame["x1"].iloc[0] == 1.0


def test_probabilities_are_json_text_and_a_null_only_segment_keeps_the_declared_types(tmp_path):
    first = row(0, datetime(2026, 1, 1, 1))
    first["probabilities"] = {"no": 0.25, "100%": 0.75, 'say "yes"': 1e-05}
    second = row(1, datetime(2026, 1, 1, 2))
    second["inputs"] = {"x1": None, "x2": None, "color": None}
    write_segments(tmp_path / "prediction_log", [first, second], TYPES)
    frame = read_prediction_log(tmp_path, "toy")
    assert json.loads(frame["probabilities"].iloc[0]) == first["probabilities"]
    assert frame["probabilities"].iloc[1] is None
    assert frame["x1"].dtype == "float64" and frame["color"].iloc[1] is None


def test_a_failing_disk_keeps_the_rows_for_the_next_flush(tmp_path):
    blocker = tmp_path / "prediction_log"
    blocker.write_text("a file where the folder should be")
    writer = PredictionLogWriter(tmp_path)
    writer.write([row(0, datetime(2026, 1, 1))])
    assert writer.flush() == 0 and writer.backlog == 1 and writer.failed_flushes == 1
    blocker.unlink()
    assert writer.flush() == 1 and writer.backlog == 0
    assert len(read_prediction_log(tmp_path, "toy")) == 1


def test_the_child_process_writer_writes_the_same_log_as_the_in_process_one(tmp_path):
    rows = [row(i, datetime(2026, 1, 1, 9, 59, 57) + timedelta(seconds=i)) for i in range(6)]
    rows[1]["probabilities"] = {"0": 0.25, "1": 0.75}
    here = PredictionLogWriter(tmp_path / "here", input_types=TYPES)
    here.write(rows)
    here.close()
    child = ChildProcessLogWriter(tmp_path / "child", flush_seconds=0.05, input_types=TYPES).start()
    assert child.child_pid is not None
    child.write(rows[:3])
    assert child.flush() == 3 and child.backlog == 0  # flush returns once the child published the rows
    child.write(rows[3:])
    child.close()
    assert child.backlog == 0 and child.written_rows == 6 and child.segments == 2  # one per flush and hour
    expected = read_prediction_log(tmp_path / "here", "toy")
    assert read_prediction_log(tmp_path / "child", "toy").equals(expected)
    assert expected.loc[1, "probabilities"] == '{"0":0.25,"1":0.75}'


def test_the_child_process_writer_falls_back_to_this_process_when_its_child_dies(tmp_path):
    writer = ChildProcessLogWriter(tmp_path, flush_seconds=60, input_types=TYPES).start()
    writer.write([row(0, datetime(2026, 1, 1))])
    assert writer.flush() == 1
    writer._child.kill()
    writer._child.wait()
    writer.write([row(1, datetime(2026, 1, 1)), row(2, datetime(2026, 1, 1))])
    writer.flush()  # finds the child gone: the rows stay queued, and are written here from now on
    writer.close()
    assert writer.backlog == 0 and writer.child_pid is None
    assert sorted(read_prediction_log(tmp_path, "toy")["entity_key"]) == ["0", "1", "2"]


def test_the_writer_process_writes_what_it_received_when_the_service_goes_away(tmp_path):
    """A service killed with SIGKILL closes the child's pipe without a commit: the child still writes the rows."""
    child = _start_child(tmp_path / "prediction_log", TYPES)
    _send(child.stdin, ("rows", [row(i, datetime(2026, 1, 1)) for i in range(5)]))
    child.stdin.close()
    assert child.wait(timeout=60) == 0
    assert len(read_prediction_log(tmp_path, "toy")) == 5


def test_a_failing_disk_in_the_child_keeps_the_rows_for_the_next_flush(tmp_path):
    blocker = tmp_path / "prediction_log"
    blocker.write_text("a file where the folder should be")
    writer = ChildProcessLogWriter(tmp_path, flush_seconds=60).start()
    writer.write([row(0, datetime(2026, 1, 1))])
    assert writer.flush() == 0 and writer.backlog == 1 and writer.failed_flushes == 1
    blocker.unlink()
    assert writer.flush() == 1 and writer.backlog == 0
    writer.close()
    assert len(read_prediction_log(tmp_path, "toy")) == 1


def test_the_bucket_is_stable_across_processes_and_roughly_uniform():
    keys = [f"k:{i}" for i in range(20_000)]
    here = [bucket(k) for k in keys[:5]]
    code = "from mlplatform.lib.routing import bucket; print([bucket(f'k:{i}') for i in range(5)])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert str(here) == there.strip()
    share = sum(role_for(k, 10) == CANARY_ROLE for k in keys) / len(keys)
    assert share == pytest.approx(0.10, abs=0.01)
    assert all(role_for(k, 0) == CHAMPION_ROLE for k in keys[:1000])
    assert all(role_for(k, 100) == CANARY_ROLE for k in keys[:1000])
    deciles = collections.Counter(bucket(k) * 10 // 10_000 for k in keys)
    assert min(deciles.values()) > 1800


def test_entity_keys_are_canonical_and_routing_falls_back_to_record_then_request():
    assert entity_key({"id": 7.0}, ["id"]) == entity_key({"id": 7}, ["id"]) == "7"
    assert entity_key({"a": "x", "b": 1}, ["a", "b"]) == '["x",1]'
    assert entity_key({"a": "x"}, ["a", "b"]) is None
    assert entity_key({"id": 1}, []) is None
    assert routing_key("7", "r1", "q", 0) == "k:7"
    assert routing_key(None, "r1", "q", 0) == "r:r1"
    assert routing_key(None, None, "q", 3) == "q:q:3"
