"""Fairness on live traffic end to end: real uvicorn, real HTTP, a real MLflow registry (SQLite), the real CLI and
the Dagster approve job.

A credit model under a policy requiring live fairness serves its champion and scores each challenger in the shadow.
Requests carry the applicant's sex beside the features: it changes no prediction, it is logged, and promotion
reads it: a challenger whose approvals differ by ~0.3 between women and men on live traffic is refused (the reason
names the attribute, the value and the predictions, and the refusal is audited); a fair one is promoted.
"""

from __future__ import annotations

import re
import textwrap

import duckdb
import numpy as np
import pandas as pd
import pytest

from mlplatform import names
from mlplatform.cli import main
from mlplatform.lib.prediction_log import read_prediction_log
from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
from mlplatform.lib.training import build_pipeline, split_xy
from mlplatform.serving.app import ServingConfig
from mlplatform.specs import load_specs
from mlplatform_tests.helpers import load_definitions
from mlplatform_tests.test_serving import LiveServer, records, wait_until

SPEC = """
name: credit
task: binary
source:
  path: credit.csv
  timestamp: ts
  key: [id]
target: approved
features:
  numeric: [x1, x2]
columns:
  x1: {min: 0, max: 10}
partitions:
  start: 2024-01-01
  end: 2024-01-22
estimator:
  class: sklearn.linear_model.LogisticRegression
fairness:
  sensitive: [sex]
  max_demographic_parity_difference: 0.1
policy: fair_live
rollout: {canary_percent: 0, shadow: true}
"""
POLICIES = "policies: {fair_live: {require_live_fairness: true}}\n"


def applicants(n: int, first_id: int, seed: int) -> pd.DataFrame:
    """Women and men alike in x2; women's x1 is higher (x1 is no sensitive column, but it tracks sex here)."""
    rng = np.random.default_rng(seed)
    sex = np.array(["female", "male"] * (n // 2), dtype=object)
    x1 = np.where(sex == "female", rng.uniform(2.5, 10, n), rng.uniform(0, 7.5, n)).round(3)
    return pd.DataFrame({"id": np.arange(first_id, first_id + n), "x1": x1, "x2": rng.normal(0, 1, n).round(3),
                         "sex": sex})


def shadow_rows(home, version: str) -> pd.DataFrame:
    logged = read_prediction_log(home, "credit")
    return logged[(logged["role"] == "shadow") & (logged["version"] == version)]


def test_a_shadow_version_unfair_on_live_traffic_is_refused_naming_attribute_and_value_and_a_fair_one_is_promoted(
        home, instance, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLPLATFORM_POLICIES", raising=False)
    specs_dir = tmp_path / "specs"
    specs_dir.mkdir()
    (specs_dir / "credit.yaml").write_text(textwrap.dedent(SPEC))
    (specs_dir / "policies.yaml").write_text(POLICIES)
    rows = applicants(300, 0, seed=1)
    rows["ts"] = "2024-01-02 10:00:00"
    rows["approved"] = np.where(rows["x2"] > 0, "yes", "no")
    rows.to_csv(specs_dir / "credit.csv", index=False)
    monkeypatch.setenv("MLPLATFORM_SPECS", str(specs_dir))
    [spec] = load_specs(specs_dir)
    tracker = Tracker.under(home / "mlflow")
    x = split_xy(rows, spec)[0]
    # v1 and v3 approve on x2 (alike for women and men); v2 approves on x1, which tracks sex on this traffic
    for version, decides_on, c in (("1", "x2", 1.0), ("2", "x1", 1.0), ("3", "x2", 0.5)):
        target = np.where(x[decides_on] > (5 if decides_on == "x1" else 0), "yes", "no")
        spec.estimator.params = {"C": c}
        pipeline = build_pipeline(spec).fit(x, target)
        logged = tracker.log_trained_model("credit", f"credit-{version}", pipeline, x.head(5), {}, {}, {}, {},
                                           {"gates": "passed"})
        assert logged.version == version
    tracker.set_alias("credit", CHAMPION, "1")
    tracker.set_alias("credit", CHALLENGER, "2")

    config = ServingConfig(home=home, specs=load_specs(specs_dir), tracker=Tracker.under(home / "mlflow"),
                           poll_seconds=0.05, flush_seconds=0.1)
    with LiveServer(config) as server:
        traffic = applicants(800, 1000, seed=2)
        answers = []
        for start in range(0, len(traffic), 200):
            response = server.predict("credit", records(traffic.iloc[start:start + 200], ["id", "x1", "x2", "sex"]))
            assert response.status_code == 200, response.text
            answers += response.json()["predictions"]
        # the sensitive column changes nothing the model answers
        blind = server.predict("credit", records(traffic.head(50), ["id", "x1", "x2"])).json()["predictions"]
        assert [(a["prediction"], a["probabilities"]) for a in blind] == \
            [(a["prediction"], a["probabilities"]) for a in answers[:50]]
        wait_until(lambda: len(shadow_rows(home, "2")) == 850)
        shadow = shadow_rows(home, "2")
        assert shadow["sensitive.sex"].isna().sum() == 50  # the blind request carried none: left out
        seen = shadow.dropna(subset=["sensitive.sex"])
        rates = (seen["score"] >= 0.5).groupby(seen["sensitive.sex"]).mean()
        expected = rates.max() - rates.min()
        assert expected == pytest.approx(0.3, abs=0.06)

        capsys.readouterr()
        assert main(["promote", "credit", "--version", "2", "--by", "ana", "--reason", "shadow week reviewed"]) == 1
        refusal = capsys.readouterr().err
        assert (f"demographic parity difference on sex is {expected:.3f} on 800 live predictions, above the limit "
                "0.1") in refusal, refusal
        assert "policy 'fair_live'" in refusal and "not promoted, nothing changed" in refusal
        assert tracker.alias_version("credit", CHAMPION) == "1"
        # the UI's approve job asks the same question and gets the same answer
        approve = load_definitions().resolve_job_def(names.approve_job("credit"))
        refused = approve.execute_in_process(instance=instance, raise_on_error=False, run_config={"ops": {
            "credit_approve_champion": {"config": {"approved_by": "bo", "reason": "looks fine", "version": "2"}}}})
        assert not refused.success and f"on sex is {expected:.3f} on 800 live predictions" in str(refused.all_events)
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
            audited = connection.execute("select event, actor, version, passed, summary from audit.events where "
                                         "model = 'credit' order by seq").fetchall()
        assert [row[:4] for row in audited] == [("promotion_refused", "ana", "2", False),
                                                ("promotion_refused", "bo", "2", False)]
        assert re.search(r"demographic parity difference on sex is 0\.\d{3} on 800 live predictions", audited[0][4])

        tracker.set_alias("credit", CHALLENGER, "3")  # a fair challenger: the service swaps its shadow
        wait_until(lambda: server.client.get("/v1/models/credit").json()["rollout"]["challenger_version"] == "3")
        more = applicants(800, 5000, seed=3)
        for start in range(0, len(more), 200):
            assert server.predict("credit", records(more.iloc[start:start + 200], ["id", "x1", "x2", "sex"])) \
                .status_code == 200
        wait_until(lambda: len(shadow_rows(home, "3")) == 800)
        assert main(["promote", "credit", "--version", "3", "--by", "ana", "--reason", "fair on live traffic"]) == 0
        assert "champion v1 -> v3 (approved by ana)" in capsys.readouterr().out
        wait_until(lambda: server.champion("credit") == "3")
