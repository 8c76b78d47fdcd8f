"""An audit nobody can rewrite quietly: a keyed chain, its head anchored outside the warehouse, alias changes checked
against the chain. Every tampering case is made on a copy of one real trail (DuckDB, MLflow on SQLite) and must
make `mlplatform audit MODEL --verify` exit 1 with a sentence naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from mlplatform.cli import main
from mlplatform.lib import audit, promotion
from mlplatform.lib.audit import AuditEvent, append_events, read_events, verify_chain
from mlplatform.lib.audit_integrity import HEAD_TAG, checkpoint_path, keying_note
from mlplatform.lib.audit_key import AUDIT_KEY_ENV, AUDIT_KEY_FILE_ENV, AuditKey, AuditKeyError, configured_key
from mlplatform.lib.tracking import Tracker
from mlplatform_tests.conftest import toy_rows

KEY = "k" * 32
OTHER_KEY = "o" * 32


def _register(tracker: Tracker, weeks: list[str]) -> None:
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline

    rows = toy_rows()
    x, y = rows[["x1", "x2"]], rows["y"]
    for week in weeks:
        pipeline = Pipeline([("estimator", LinearRegression())]).fit(x, y)
        tracker.log_trained_model("toy", f"toy-{week}", pipeline, x.head(5), {"seed": 0}, {"rmse": 0.1}, {}, {},
                                  {"gates": "passed", "week": week})


@pytest.fixture(scope="module")
def keyed_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with a keyed trail of 11 events: 6 gates, champion v1 (7), 3 drift alerts, champion v2 (11, the head
    anchored in the registry and the checkpoint)."""
    home = tmp_path_factory.mktemp("keyed") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(AUDIT_KEY_ENV, KEY)
        tracker = Tracker.under(home / "mlflow")
        _register(tracker, ["2024-01-08", "2024-01-15"])
        with duckdb.connect(str(home / "warehouse.duckdb")) as connection:
            append_events(connection, [AuditEvent("toy", "gate", "run", f"gate {i}", passed=True, version="1")
                                       for i in range(6)])
            promotion.commit_changes(connection, tracker, [promotion.approval_change(tracker, "toy", "1", "alice", "ok")])
            append_events(connection, [AuditEvent("toy", "drift_alert", "run", f"drift {i}", passed=False)
                                       for i in range(3)])
            promotion.commit_changes(connection, tracker, [promotion.approval_change(tracker, "toy", "2", "bob", "better")])
    return home


@pytest.fixture
def trail(keyed_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the keyed home, configured as MLPLATFORM_HOME with the key."""
    home = tmp_path / "home"
    shutil.copytree(keyed_home, home)
    monkeypatch.setenv("MLPLATFORM_HOME", str(home))
    monkeypatch.setenv(AUDIT_KEY_ENV, KEY)
    monkeypatch.chdir(tmp_path)
    return home


def _verify(capsys: pytest.CaptureFixture, model: str = "toy") -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["audit", model, "--verify"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _sql(home: Path, statement: str, params: list | None = None) -> None:
    with duckdb.connect(str(home / "warehouse.duckdb")) as connection:
        connection.execute(statement, params or [])


def test_an_untampered_keyed_trail_verifies_with_both_anchors(trail, capsys):
    code, out, err = _verify(capsys)
    assert code == 0, err
    assert "intact (11 events" in out and "keyed (HMAC-SHA256, key id" in out and "head anchored at event 11" in out
    anchor = json.loads(Tracker.under(trail / "mlflow").model_tags("toy")[HEAD_TAG])
    assert anchor["seq"] == 11 and anchor["scheme"].startswith("hmac-sha256:") and KEY not in json.dumps(anchor)
    assert json.loads(checkpoint_path(trail, "toy").read_text())["seq"] == 11
    with duckdb.connect(str(trail / "warehouse.duckdb")) as connection:  # the key is nowhere in the warehouse
        dumped = connection.execute("select * from audit.events").fetchdf().to_string()
    assert KEY not in dumped and "hmac-sha256:" in dumped


@pytest.mark.parametrize(("tamper", "expected"), [
    ("update audit.events set summary = 'gate 2 (edited)' where seq = 3", "event 3 (gate"),
    ("delete from audit.events where seq = 5", "event 5 is missing"),
    ("delete from audit.events where seq = 11", "event 11 deleted: the registry tag mlplatform.audit_head"),
    ("delete from audit.events where seq >= 7", "events 7..11 deleted"),
    ("delete from audit.events", "the whole trail was deleted"),
    ("update audit.alias_changes set version = '1' where version = '2'", "audit.alias_changes row 'champion: v1 -> v1"),
    ("delete from audit.alias_changes where version = '1'", "audit.alias_changes lacks the row"),
    ("insert into audit.alias_changes values ('2024-01-01', 'toy', 'champion', '2', null, 'mallory', 'x', null, 'set')",
     "not backed by a chained event"),
], ids=["edited", "middle-deleted", "newest-deleted", "newest-5-deleted", "trail-deleted", "alias-edited",
        "alias-deleted", "alias-forged"])
def test_each_tampering_of_the_warehouse_is_caught(trail, capsys, tamper, expected):
    _sql(trail, tamper)
    code, out, err = _verify(capsys)
    assert code == 1 and expected in err, err


def test_a_forged_row_with_recomputed_hashes_is_caught(trail, capsys, monkeypatch):
    monkeypatch.delenv(AUDIT_KEY_ENV)  # the forger can write the warehouse but does not hold the key
    with duckdb.connect(str(trail / "warehouse.duckdb")) as connection:
        append_events(connection, [AuditEvent("toy", "approval", "mallory", "champion: v2 -> v1", version="1")])
    monkeypatch.setenv(AUDIT_KEY_ENV, KEY)
    code, _, err = _verify(capsys)
    assert code == 1 and "event 12 (approval) is hashed without the audit key" in err

    _sql(trail, "update audit.events set hash_scheme = (select hash_scheme from audit.events where seq = 1), "
                "hash = sha256('x') where seq = 12")  # claims the key's scheme: its HMAC does not check
    code, _, err = _verify(capsys)
    assert code == 1 and "event 12 (approval" in err and "forged without the audit key" in err

    monkeypatch.setenv(AUDIT_KEY_ENV, OTHER_KEY)  # a key of the forger's own: the configured key disagrees
    code, _, err = _verify(capsys)
    assert code == 1 and "the configured key is" in err


def test_a_middle_row_deleted_and_the_rest_rehashed_without_the_key_is_caught(trail, capsys, monkeypatch):
    with duckdb.connect(str(trail / "warehouse.duckdb")) as connection:
        kept = read_events(connection, "toy")
        kept = kept[kept["seq"] != 5].sort_values("seq").reset_index(drop=True)
        previous = audit.GENESIS
        for index, record in kept.iterrows():  # renumber and re-hash, as the probe did, with the unkeyed scheme
            row = {k: (None if audit._missing(v) else v) for k, v in record.items()}
            row.update(seq=index + 1, prev_hash=previous, hash_scheme="sha256",
                       occurred_at=pd.Timestamp(row["occurred_at"]).to_pydatetime())
            row["hash"] = audit._row_hash(row)
            kept.loc[index, ["seq", "prev_hash", "hash_scheme", "hash"]] = [row["seq"], previous, "sha256", row["hash"]]
            previous = row["hash"]
        connection.execute("delete from audit.events")
        connection.register("kept", kept)
        connection.execute("insert into audit.events by name select * from kept")
    assert verify_chain(read_events(duckdb.connect(str(trail / "warehouse.duckdb")), "toy"), None) == []
    code, _, err = _verify(capsys)
    assert code == 1 and "event 11 deleted" in err  # the anchors still say 11 events


def test_a_replaced_registry_anchor_is_caught(trail, capsys):
    tracker = Tracker.under(trail / "mlflow")
    tracker.set_model_tag("toy", HEAD_TAG, json.dumps({"seq": 11, "hash": "0" * 64, "scheme": "sha256"}))
    code, _, err = _verify(capsys)
    assert code == 1 and "is not signed although the chain is keyed" in err


def test_an_unknown_model_is_not_intact(trail, capsys):
    code, _, err = _verify(capsys, "tyo")
    assert code == 1 and "no audit trail to verify" in err and "models with a trail: toy" in err
    assert "no model of that name is registered" in err


def test_a_keyed_trail_without_the_key_is_not_called_intact(trail, capsys, monkeypatch):
    monkeypatch.delenv(AUDIT_KEY_ENV)
    code, _, err = _verify(capsys)
    assert code == 1 and "no audit key is configured here" in err


def test_events_written_before_keying_still_verify_and_stay_protected(tmp_path, monkeypatch):
    monkeypatch.delenv(AUDIT_KEY_ENV, raising=False)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        # rows of a warehouse from before hash_scheme existed: the old table, the old hash
        connection.execute(audit.EVENTS_DDL.replace(", hash_scheme varchar", ""))
        previous = audit.GENESIS
        for seq in (1, 2, 3):
            row = {"model": "m", "seq": seq, "occurred_at": pd.Timestamp(f"2024-01-0{seq}").to_pydatetime(),
                   "event": "gate", "actor": "run", "version": "1", "week": None, "passed": True,
                   "summary": f"gate {seq}", "dagster_run_id": None, "mlflow_run_id": None, "data_fingerprint": None,
                   "code_version": "mlplatform 0.1.0", "details": "{}", "prev_hash": previous}
            row["hash"] = audit._row_hash(row)
            connection.register("legacy", pd.DataFrame([row]).astype({"week": "string", "dagster_run_id": "string",
                                                                      "mlflow_run_id": "string",
                                                                      "data_fingerprint": "string"}))
            connection.execute("insert into audit.events by name select * from legacy")
            connection.unregister("legacy")
            previous = row["hash"]
        append_events(connection, [AuditEvent("m", "gate", "run", "gate 4 (unkeyed)", passed=True)])
        assert verify_chain(read_events(connection, "m")) == []
        assert "unkeyed" in keying_note(read_events(connection, "m"), None)

        monkeypatch.setenv(AUDIT_KEY_ENV, KEY)
        append_events(connection, [AuditEvent("m", "approval", "alice", "champion -> v1", version="1")])
        events = read_events(connection, "m")
        assert list(events["hash_scheme"].fillna("-")) == ["-", "-", "-", "sha256", AuditKey(KEY.encode()).scheme]
        assert verify_chain(events) == []
        assert "keyed (HMAC-SHA256" in (note := keying_note(events, configured_key())) and "events 1..4" in note

        # re-hashing the pre-keying rows after an edit breaks the first keyed event: it chained over them
        connection.execute("update audit.events set summary = 'gate 1 (edited)' where seq = 1")
        edited = read_events(connection, "m")
        previous = audit.GENESIS
        for seq in (1, 2, 3, 4):
            record = edited[edited["seq"] == seq].iloc[0].to_dict()
            row = {k: (None if audit._missing(v) else v) for k, v in record.items()}
            row.update(prev_hash=previous, occurred_at=pd.Timestamp(row["occurred_at"]).to_pydatetime(), seq=seq,
                       passed=bool(row["passed"]))
            previous = audit._row_hash(row)
            connection.execute("update audit.events set prev_hash = ?, hash = ? where seq = ?",
                               [row["prev_hash"], previous, seq])
        problems = verify_chain(read_events(connection, "m"))
        assert problems and all("event 5" in p for p in problems)


def test_an_unusable_key_setting_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.delenv(AUDIT_KEY_ENV, raising=False)
    assert configured_key() is None
    monkeypatch.setenv(AUDIT_KEY_FILE_ENV, str(tmp_path / "missing.key"))
    with pytest.raises(AuditKeyError, match="MLPLATFORM_AUDIT_KEY_FILE=.*cannot read"):
        configured_key()
    (tmp_path / "short.key").write_text("abc\n")
    monkeypatch.setenv(AUDIT_KEY_FILE_ENV, str(tmp_path / "short.key"))
    with pytest.raises(AuditKeyError, match="3 bytes; use at least 16"):
        configured_key()
    (tmp_path / "good.key").write_text(KEY + "\n")
    monkeypatch.setenv(AUDIT_KEY_FILE_ENV, str(tmp_path / "good.key"))
    assert configured_key() == AuditKey(KEY.encode()) and KEY not in repr(configured_key())
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:  # a run with a broken key setting writes nothing
        monkeypatch.setenv(AUDIT_KEY_FILE_ENV, str(tmp_path / "missing.key"))
        with pytest.raises(AuditKeyError):
            append_events(connection, [AuditEvent("m", "gate", "run", "gate")])


def test_a_backup_carries_the_checkpoints_so_a_restored_home_verifies(trail, tmp_path, capsys, monkeypatch):
    assert main(["backup", "--to", str(tmp_path / "backup")]) == 0
    restored = tmp_path / "restored"
    shutil.copytree(tmp_path / "backup", restored)
    monkeypatch.setenv("MLPLATFORM_HOME", str(restored))
    code, out, err = _verify(capsys)
    assert code == 0 and "head anchored at event 11" in out, err


@pytest.mark.slow
def test_a_keyed_run_and_a_rollback_from_the_cli_verify_with_the_head_anchored(home, spec_dir, instance, capsys,
                                                                                monkeypatch):
    from mlplatform_tests.helpers import load_definitions, run_weeks
    from mlplatform_tests.test_audit_trail import MODEL_SPEC

    monkeypatch.setenv(AUDIT_KEY_ENV, KEY)
    spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", "2024-01-15").success
    with duckdb.connect(str(home / "warehouse.duckdb")) as connection:
        champions = audit.champion_history(connection, "toy")
    assert len(champions) > 1, champions  # two weeks trained under approval: auto; a person puts the first back
    assert main(["rollback", "toy", "--by", "ana", "--reason", "drill"]) == 0
    code, out, err = _verify(capsys)
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        events = read_events(connection, "toy")
    assert code == 0, err
    assert set(events["hash_scheme"]) == {AuditKey(KEY.encode()).scheme}
    newest_alias_move = int(events[events["details"].str.contains('"alias"')]["seq"].max())
    assert f"head anchored at event {max(newest_alias_move, int(events['seq'].max()))}" in out  # the checkpoint too
