"""Fairness on live traffic, the pure parts: the measures on logged predictions (the offline gate's definitions,
checked against fairlearn), what a refusal says, sensitive values from outcomes, the log's sensitive columns, and
the spec, policy and schema rules. The served end to end is test_live_fairness_serving.py."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from mlplatform.lib import live_fairness
from mlplatform.lib.prediction_log import SENSITIVE_PREFIX, read_prediction_log, write_segments
from mlplatform.lib.promotion import AliasChange
from mlplatform.serving.schema import RecordProblems, RecordSchema
from mlplatform.specs import SpecError, load_specs
from mlplatform.specs.schema import FairnessSpec
from mlplatform_tests.conftest import TOY_SPEC

FAIR = FairnessSpec(sensitive=["sex", "age"], bands={"age": [30, 50]}, max_demographic_parity_difference=0.1,
                    max_equalized_odds_difference=0.15, min_group_rows=20)


def binary_log(n: int = 1200, female_rate: float = 0.6, male_rate: float = 0.3, seed: int = 0,
               version: str = "2", role: str = "shadow") -> pd.DataFrame:
    """Logged binary predictions: half female, half male, selected at the given rates (score >= 0.5)."""
    rng = np.random.default_rng(seed)
    sex = np.array(["female", "male"] * (n // 2), dtype=object)
    selected = np.zeros(n, dtype=bool)
    for group, rate in (("female", female_rate), ("male", male_rate)):  # exactly the rate, in a random order
        index = rng.permutation(np.flatnonzero(sex == group))
        selected[index[:round(rate * len(index))]] = True
    score = np.where(selected, rng.uniform(0.5, 1, n), rng.uniform(0, 0.5, n))
    return pd.DataFrame({
        "request_id": [f"r{i}" for i in range(n)], "record_index": 0, "version": version, "role": role,
        "entity_key": [str(i) for i in range(n)], "record_id": None, "time": datetime(2024, 1, 3),
        "label": np.where(selected, "yes", "no"), "score": score,
        "probabilities": [json.dumps({"no": 1 - s, "yes": s}) for s in score],
        SENSITIVE_PREFIX + "sex": sex, SENSITIVE_PREFIX + "age": [str(a) for a in rng.integers(18, 80, n)]})


def test_label_free_parity_is_fairlearns_demographic_parity_difference_and_the_reason_names_attribute_and_value():
    logged = binary_log()
    measures = live_fairness.measure("binary", FAIR, logged, "2", "shadow")
    sex = next(m for m in measures if m.attribute == "sex" and m.measure == "demographic parity difference")
    selected = (logged["score"] >= 0.5).astype(int)
    expected = demographic_parity_difference(selected, selected, sensitive_features=logged["sensitive.sex"])
    assert sex.value == pytest.approx(expected) and sex.value == pytest.approx(0.3)
    assert sex.passed is False and sex.limit == 0.1 and sex.rows == 1200 and sex.groups == {"female": 600, "male": 600}
    text = sex.verdict_text()
    assert f"demographic parity difference on sex is {sex.value:.3f} on 1,200 live predictions, above the limit 0.1" \
        in text
    ratio = next(m for m in measures if m.attribute == "sex" and m.measure == live_fairness.SELECTION_RATE_RATIO)
    rates = selected.groupby(logged["sensitive.sex"]).mean()
    assert ratio.value == pytest.approx(rates.min() / rates.max()) and ratio.passed is None  # reported, no limit
    age = next(m for m in measures if m.attribute == "age (banded)" and m.measure == "demographic parity difference")
    assert list(age.groups) == ["<30", "30-50", ">=50"] and age.passed is True  # age does not drive the selection


def test_a_version_is_refused_when_a_measure_fails_or_too_few_predictions_carry_the_attribute():
    unfair = live_fairness.judge_version("credit", "binary", FAIR, binary_log(), "2", "rollout.require_live_fairness")
    assert unfair.refused and "on sex is 0.3" in unfair.reason() and "rollout.require_live_fairness" in unfair.reason()
    assert not any("age" in p for p in unfair.problems)

    fair = live_fairness.judge_version("credit", "binary", FAIR, binary_log(female_rate=0.45, male_rate=0.45), "2",
                                       "policy 'strict'")
    assert not fair.refused, fair.problems

    few = binary_log(n=60, female_rate=0.5, male_rate=0.5)
    few.loc[few.index[:50], "sensitive.sex"] = None  # clients that do not send it form no group
    verdict = live_fairness.judge_version("credit", "binary", FAIR, few, "2", "policy 'strict'")
    [problem] = [p for p in verdict.problems if "sex" in p]
    assert "too few live predictions to judge demographic parity difference on sex: 10 with a value" in problem
    assert "at least 20 in each of two groups" in problem
    assert next(m for m in verdict.measures if m.attribute == "sex").without_value == 50

    nothing = live_fairness.judge_version("credit", "binary", FAIR, binary_log(version="1"), "2", "policy 'strict'")
    assert nothing.refused and "no live predictions of v2 yet" in nothing.reason()


def test_equalized_odds_on_labelled_predictions_is_fairlearns_and_a_failing_stored_one_refuses():
    logged = binary_log(female_rate=0.4, male_rate=0.4, seed=3)
    rng = np.random.default_rng(4)
    truth = np.where(logged["sensitive.sex"] == "female", logged["label"],  # women's outcomes follow the model
                     np.where(rng.random(len(logged)) < 0.5, "yes", "no"))  # men's do not
    labelled = logged.assign(y=truth)
    measures = live_fairness.measure("binary", FAIR, logged, "2", "canary", labelled=labelled, metric="roc_auc")
    eo = next(m for m in measures if m.attribute == "sex" and m.measure == live_fairness.EQUALIZED_ODDS)
    expected = equalized_odds_difference((truth == "yes").astype(int), (logged["score"] >= 0.5).astype(int),
                                         sensitive_features=logged["sensitive.sex"])
    assert eo.labelled and eo.value == pytest.approx(expected) and eo.passed is False
    # the label-free measures pass: only the stored label-based one holds promotion back
    verdict = live_fairness.judge_version("credit", "binary", FAIR, logged, "2", "policy 'strict'", stored_labelled=[eo])
    assert verdict.refused and "equalized odds difference on sex" in verdict.reason()
    assert "labelled live predictions" in verdict.reason()


def test_regression_and_multiclass_use_the_offline_gates_parity_definitions():
    n = 400
    group = np.array(["a", "b"] * (n // 2), dtype=object)
    score = np.where(group == "a", 110.0, 90.0)
    rows = pd.DataFrame({"version": "1", "role": "champion", "score": score, "label": score.astype(str),
                         "sensitive.g": group})
    fairness = FairnessSpec(sensitive="g", max_demographic_parity_difference=0.1)
    [gap] = live_fairness.measure("regression", fairness, rows, "1", "champion")
    assert gap.measure == "relative gap of group mean predictions" and gap.value == pytest.approx(0.2) and not gap.passed
    classes = np.where(group == "a", "x", np.where(np.arange(n) % 4 == 1, "y", "x"))
    [multi] = live_fairness.measure("multiclass", fairness, rows.assign(label=classes), "1", "champion")
    assert multi.value == pytest.approx(0.5)  # class y: 0 in a, half of b


def test_sensitive_values_missing_from_a_request_are_joined_from_outcomes_holding_the_column():
    logged = binary_log(n=4)
    logged.loc[[0, 1], "sensitive.sex"] = None
    outcomes = pd.DataFrame({"join_key": ["k:0", "k:1", "k:2"], "y": ["yes"] * 3, "sex": ["male", None, "male"]})
    filled = live_fairness.attach_outcome_values(logged, outcomes, ["sex", "age"])
    assert list(filled["sensitive.sex"]) == ["male", None, "female", "male"]  # the logged value wins (row 2)


def test_the_log_keeps_the_sensitive_values_a_request_carried_beside_the_inputs(tmp_path):
    when = datetime(2024, 1, 3, 10)
    rows = [{"request_id": f"r{i}", "record_index": 0, "record_id": None, "time": when + timedelta(seconds=i),
             "model": "credit", "version": "1", "role": "champion", "entity_key": None, "label": "yes",
             "score": 0.7, "probabilities": {"no": 0.3, "yes": 0.7}, "latency_ms": 1.0,
             "inputs": {"x1": 1.0}, "sensitive": sensitive}
            for i, sensitive in enumerate([{"sex": "female", "age": "34"}, None, {"sex": "male"}])]
    types = {"credit": {"x1": "float64", "sensitive.sex": "string", "sensitive.age": "string"}}
    write_segments(tmp_path / "prediction_log", rows, types)
    logged = read_prediction_log(tmp_path, "credit")
    assert list(logged["sensitive.sex"]) == ["female", None, "male"]
    assert list(logged["sensitive.age"]) == ["34", None, None]
    assert "sex" not in logged.columns and list(logged["x1"]) == [1.0, 1.0, 1.0]


def spec_folder(tmp_path: Path, files: dict[str, str], name: str = "specs") -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


SENSITIVE = "fairness: {sensitive: [region]}\n"


def test_the_spec_key_and_the_policy_key_need_a_fairness_section_and_live_traffic(tmp_path, monkeypatch):
    monkeypatch.delenv("MLPLATFORM_POLICIES", raising=False)
    folder = spec_folder(tmp_path, {
        "blind.yaml": TOY_SPEC.replace("name: toy", "name: blind") + "rollout: {require_live_fairness: true}\n",
        "dark.yaml": TOY_SPEC.replace("name: toy", "name: dark") + SENSITIVE
        + "rollout: {require_live_fairness: true, canary_percent: 0}\n",
        "ok.yaml": TOY_SPEC.replace("name: toy", "name: ok") + SENSITIVE
        + "rollout: {require_live_fairness: true, shadow: true, canary_percent: 0}\n",
    })
    with pytest.raises(SpecError) as raised:
        load_specs(folder, check_data=False)
    found = {Path(p.file).name: p.message for p in raised.value.problems}
    assert set(found) == {"blind.yaml", "dark.yaml"}
    assert "needs a fairness section" in found["blind.yaml"] and "rollout.shadow: true" in found["dark.yaml"]
    for bad in ("blind.yaml", "dark.yaml"):
        (folder / bad).unlink()
    [ok] = load_specs(folder, check_data=False)
    assert live_fairness.required_by(ok) == "rollout.require_live_fairness"

    spec_folder(tmp_path, {"policies.yaml": "policies: {live: {require_live_fairness: true}}\n",
                           "ok.yaml": TOY_SPEC.replace("name: toy", "name: ok") + SENSITIVE + "policy: live\n",
                           "bare.yaml": TOY_SPEC.replace("name: toy", "name: bare") + "policy: live\n"})
    with pytest.raises(SpecError) as raised:
        load_specs(folder, check_data=False)
    assert [(Path(p.file).name, p.key) for p in raised.value.problems] == [("bare.yaml", "fairness")]
    (folder / "bare.yaml").unlink()
    [ok] = load_specs(folder, check_data=False)
    assert live_fairness.required_by(ok) == "policy 'live'"
    regulated = spec_folder(tmp_path, {"r.yaml": TOY_SPEC.replace("name: toy", "name: r") + SENSITIVE
                                       + "policy: regulated\n"}, "regulated")
    assert live_fairness.required_by(load_specs(regulated, check_data=False)[0]) is None  # opt-in under regulated


def test_auto_approval_under_live_fairness_moves_challenger_only_and_audits_the_held_promotion(tmp_path):
    folder = spec_folder(tmp_path, {"ok.yaml": TOY_SPEC.replace("name: toy", "name: ok") + SENSITIVE
                                    + "rollout: {approval: auto, require_live_fairness: true}\n"})
    [spec] = load_specs(folder, check_data=False)
    changes = [AliasChange("ok", alias, "3", "2", "run", "passed", "2024-01-08") for alias in ("challenger", "champion")]
    kept, note, [event] = live_fairness.hold_auto_champion(spec, changes, "-> challenger, champion")
    assert [c.alias for c in kept] == ["challenger"] and "champion held" in note
    assert event.event == "promotion_refused" and event.version == "3" and event.passed is False
    first = [AliasChange("ok", alias, "1", None, "run", "passed", "2024-01-01") for alias in ("challenger", "champion")]
    assert live_fairness.hold_auto_champion(spec, first, "n")[0] == first  # nothing served before: nothing to judge
    spec.rollout.require_live_fairness = False
    assert live_fairness.hold_auto_champion(spec, changes, "n")[0] == changes


def test_sensitive_fields_of_a_request_are_never_model_inputs_and_a_bad_one_is_named(tmp_path):
    folder = spec_folder(tmp_path, {"ok.yaml": TOY_SPEC.replace("name: toy", "name: ok") + SENSITIVE})
    [spec] = load_specs(folder, check_data=False)
    schema = RecordSchema(spec)
    record = {"id": 1, "x1": 1.0, "x2": 0.5, "color": "red", "region": 7.0}
    [checked] = schema.check([record])
    assert checked == schema.check([{k: v for k, v in record.items() if k != "region"}])[0]
    assert "region" not in checked and schema.sensitive(record) == {"region": "7"}
    assert schema.sensitive({"x1": 1.0}) is None
    assert "region" in schema.json_schema()["properties"] and "region" not in schema.json_schema()["required"]
    with pytest.raises(RecordProblems) as raised:
        schema.check([{**record, "region": {"nested": 1}}])
    assert raised.value.problems[0]["field"] == "region" and "sensitive attribute" in raised.value.problems[0]["message"]
    spec.features.categorical.append("region")  # however the spec was built, a sensitive feature is refused
    with pytest.raises(ValueError, match="never a model input"):
        RecordSchema(spec)


CREDIT_SPEC = """
name: credit
task: binary
source:
  path: credit.csv
  timestamp: ts
  key: [id]
target: approved
estimator:
  class: sklearn.linear_model.LogisticRegression
rollout: {canary_percent: 0, shadow: true}
"""
"""A binary credit model whose challenger serves in the shadow; each test adds its features, weeks and fairness
(test_live_fairness_serving.py too)."""

FAIR_LIVE_POLICY = "policies: {fair_live: {require_live_fairness: true}}\n"
"""A policy file whose ``fair_live`` policy makes promotion wait for live fairness."""

REPORT_SPEC = CREDIT_SPEC + """
features:
  numeric: [x1]
partitions:
  start: 2024-01-01
  end: 2024-01-15
fairness:
  sensitive: [sex]
  max_equalized_odds_difference: 0.2
labels:
  path: outcomes.csv
"""


def test_the_weekly_report_measures_each_version_and_role_taking_sensitive_values_from_the_outcomes(
        home, spec_dir, instance):
    """The production step's report: per version and role in ``<model>.live_fairness`` and in the asset metadata;
    a request that carried no sex gets it from the outcomes file that holds the column."""
    from dagster import AssetKey

    from mlplatform.lib.routing import entity_key
    from mlplatform_tests.helpers import load_definitions, run_weeks, warehouse_query

    n = 400
    ids = np.arange(n)
    sex = np.where(ids % 2 == 0, "female", "male")
    when = [datetime(2024, 1, 9) + timedelta(minutes=int(i)) for i in ids]
    source = pd.DataFrame({"id": ids, "ts": [w.isoformat(sep=" ") for w in when], "x1": ids % 7 * 1.0,
                           "approved": np.where(ids % 3 == 0, "yes", "no"), "sex": sex})
    spec_dir({"credit.yaml": REPORT_SPEC}, {"credit.csv": source,
                                            "outcomes.csv": source[["id", "ts", "approved", "sex"]]})
    fair = np.where(ids % 3 == 0, 0.8, 0.2)  # v1 answers the outcome itself, alike for women and men
    unfair = np.where(sex == "female", np.where(ids % 10 < 6, 0.9, 0.1), np.where(ids % 10 < 3, 0.9, 0.1))
    rows = []
    for role, version, scores in (("champion", "1", fair), ("shadow", "2", unfair)):
        rows += [{"request_id": f"r{i}", "record_index": 0, "record_id": None, "time": when[i], "model": "credit",
                  "version": version, "role": role, "entity_key": entity_key({"id": int(i)}, ["id"]),
                  "label": "yes" if scores[i] >= 0.5 else "no", "score": float(scores[i]),
                  "probabilities": {"no": 1 - float(scores[i]), "yes": float(scores[i])}, "latency_ms": 1.0,
                  "inputs": {"x1": float(i % 7)}, "sensitive": {"sex": str(sex[i])} if i < n // 2 else None}
                 for i in ids]
    write_segments(home / "prediction_log", rows, {"credit": {"x1": "float64", "sensitive.sex": "string"}})

    result = run_weeks(load_definitions(), "credit", instance, "2024-01-08",
                       assets=["labels", "live_performance", "shadow_report"])
    assert result.success
    table = warehouse_query(home, "select * from credit.live_fairness where attribute = 'sex' order by version, "
                                  "measure")
    parity = table[table["measure"] == "demographic parity difference"].set_index("version")
    assert parity.loc["2", "value"] == pytest.approx(0.4) and not parity.loc["2", "passed"]
    assert parity.loc["1", "value"] == pytest.approx(0.0, abs=0.01) and parity.loc["1", "passed"]
    assert (parity["rows"] == n).all() and (parity["without_value"] == 0).all()  # half of them from the outcomes
    assert set(table["measure"]) == {"demographic parity difference", "selection-rate ratio",
                                     "equalized odds difference"}
    odds = table[table["measure"] == "equalized odds difference"].set_index("version")
    assert odds.loc["1", "passed"] and not odds.loc["2", "passed"]  # on the predictions whose outcome is known
    live = instance.get_latest_materialization_event(AssetKey(["credit", "live_performance"]))
    metadata = live.asset_materialization.metadata
    assert "| v2 | shadow | sex | demographic parity difference | 0.400 | 0.1 | FAIL | 400 |" in \
        metadata["live_fairness"].value
    assert "v2 (shadow): demographic parity difference on sex is 0.400 on 400 live predictions, above the limit" \
        in metadata["live_fairness_verdict"].value
    shadow = instance.get_latest_materialization_event(AssetKey(["credit", "shadow_report"]))
    assert "| v2 | shadow |" in shadow.asset_materialization.metadata["live_fairness"].value
    # what promote prints as evidence, and the stored label-based measure promotion reads
    import duckdb

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        lines = live_fairness.evidence_lines(connection, "credit", "2")
        stored = live_fairness.stored_labelled_measures(connection, "credit", "2")
    assert ("live fairness week 2024-01-08 (shadow): demographic parity difference on sex 0.400 on 400 predictions, "
            "limit 0.1: FAIL") in lines
    [odds] = stored
    assert odds.measure == live_fairness.EQUALIZED_ODDS and odds.passed is False and "week 2024-01-08" in odds.role


def test_the_first_champion_is_not_held_by_live_fairness_a_later_one_is_unless_forced(tmp_path):
    """Nothing serves before a model's first champion, so it has no live traffic to be judged on: its gates vouch.
    A later version is refused with the audit event to record; ``force`` overrides it and says so."""
    from mlplatform.lib.promotion import PromotionRefused, approval_change
    from mlplatform.lib.tracking import CHAMPION, Tracker
    from mlplatform_tests.helpers import register_toy_versions

    tracker = Tracker.under(tmp_path / "mlflow")
    register_toy_versions(tracker, ["2024-01-08", "2024-01-15"])
    unfair = live_fairness.judge_version("toy", "binary", FAIR, binary_log(), "2", "policy 'strict'")
    asked = []

    def check(version: str):
        asked.append(version)
        return unfair

    first = approval_change(tracker, "toy", "1", "ana", "first", live_check=check)
    assert first is not None and first.forced is None and asked == []
    tracker.set_alias("toy", CHAMPION, "1")
    with pytest.raises(PromotionRefused) as refused:
        approval_change(tracker, "toy", "2", "ana", "next", live_check=check)
    assert "demographic parity difference on sex is 0.300" in str(refused.value) and asked == ["2"]
    event = refused.value.audit
    assert (event.event, event.actor, event.version, event.passed) == ("promotion_refused", "ana", "2", False)
    assert event.details["check"] == "live_fairness" and event.details["measures"]
    forced = approval_change(tracker, "toy", "2", "ana", "incident", force=True, live_check=check)
    assert forced.forced == unfair.reason() and "[forced with --force: toy v2: live fairness fails" in forced.reason


CANARY_SPEC = """
name: credit
task: binary
source:
  path: credit.csv
  timestamp: ts
target: approved
features:
  numeric: [x1]
partitions:
  start: 2024-01-01
estimator:
  class: sklearn.linear_model.LogisticRegression
fairness:
  sensitive: [sex]
  max_demographic_parity_difference: 0.1
rollout:
  approval: auto
  require_live_fairness: true
  analysis: {min_requests: 100, min_minutes: 0}
"""


def canary_traffic(since: datetime, version: str, role: str, female_rate: float, male_rate: float,
                   first: int, n: int = 600, seed: int = 0) -> list[dict]:
    """Logged one-record requests of ``version`` in ``role``: half female, half male, selected (score >= 0.5) at the
    given rates; the scores of the selected and the others drawn alike whatever the rates, so two arms selecting the
    same share overall have the same score distribution (the analysis sees no shift)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sex = "female" if i % 2 == 0 else "male"
        selected = (i // 2) % 100 < round(100 * (female_rate if sex == "female" else male_rate))
        score = float(rng.uniform(0.5, 1) if selected else rng.uniform(0, 0.5))
        rows.append({"request_id": f"{role}-{first + i}", "record_index": 0, "record_id": None,
                     "time": since + timedelta(seconds=1 + i * 0.5), "model": "credit", "version": version,
                     "role": role, "entity_key": str(first + i), "inputs": {"x1": float(i % 7)}, "score": score,
                     "label": "yes" if selected else "no", "probabilities": {"no": 1 - score, "yes": score},
                     "latency_ms": float(rng.uniform(2, 4)), "sensitive": {"sex": sex}})
    return rows


def test_the_canary_analysis_does_not_promote_a_canary_unfair_on_live_traffic_and_audits_why(tmp_path, monkeypatch):
    """approval: auto + require_live_fairness: a canary with good evidence on every analysis signal but a demographic
    parity difference of 0.3 on its live predictions stays canary at its share; the audit's promotion_refused names
    the attribute and the value. The same evidence without the requirement promotes it."""
    import duckdb
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline

    from mlplatform.lib import promotion
    from mlplatform.lib.canary import analyse_and_act
    from mlplatform.lib.promotion import CANARY_SHARE_TAG, CANARY_SINCE_TAG
    from mlplatform.lib.rollout_analysis import PROMOTE
    from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MLPLATFORM_HOME", str(home))
    [spec] = load_specs(spec_folder(tmp_path, {"credit.yaml": CANARY_SPEC}), check_data=False)
    assert spec.rollout.auto_promote == "canary"  # the default
    tracker, warehouse = Tracker.under(home / "mlflow"), home / "warehouse.duckdb"
    x = pd.DataFrame({"x1": np.arange(20.0)})
    pipeline = Pipeline([("estimator", LinearRegression())]).fit(x, np.arange(20.0))
    for week in ("2024-01-01", "2024-01-08"):  # the gates pass: what the model step does (lib/lifecycle.py)
        made = tracker.log_trained_model("credit", f"credit-{week}", pipeline, x.head(5), {}, {}, {}, {},
                                         {"gates": "passed", "week": week}).version
        current = {alias: tracker.alias_version("credit", alias) for alias in (CHALLENGER, CHAMPION)}
        weeks = {a: tracker.version_tags("credit", v).get("week") if v else None for a, v in current.items()}
        changes, _ = promotion.gate_changes("credit", made, True, week, "test", "auto", current, weeks, spec.rollout)
        with duckdb.connect(str(warehouse)) as connection:
            promotion.commit_changes(connection, tracker, changes)
    assert (tracker.alias_version("credit", CHAMPION), tracker.alias_version("credit", CHALLENGER)) == ("1", "2")
    since = datetime.fromisoformat(tracker.version_tags("credit", "2")[CANARY_SINCE_TAG])
    write_segments(home / "prediction_log",
                   canary_traffic(since, "1", "champion", 0.45, 0.45, 0, seed=1)  # fair, 45 % selected
                   + canary_traffic(since, "2", "canary", 0.6, 0.3, 10_000, seed=2),  # 45 % too, but 60 % vs 30 %
                   {"credit": {"x1": "float64", "sensitive.sex": "string"}})
    now = since + timedelta(minutes=10)

    run = analyse_and_act(home, warehouse, spec, tracker, 30, now=now)
    assert run.analysis.decision == PROMOTE, run.text()  # every analysis signal is good ...
    assert run.change is None and run.refused is not None  # ... but live fairness refuses
    assert "demographic parity difference on sex is 0.300" in run.refused and "promotion refused" in run.text()
    assert (tracker.alias_version("credit", CHAMPION), tracker.alias_version("credit", CHALLENGER)) == ("1", "2")
    assert tracker.version_tags("credit", "2")[CANARY_SHARE_TAG] == "10"  # stays at its share
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        [(actor, version, passed, summary, details)] = connection.execute(
            "select actor, version, passed, summary, details from audit.events where model = 'credit' and "
            "event = 'promotion_refused'").fetchall()
    assert (actor, version, passed) == ("canary analysis", "2", False)
    assert "live fairness fails" in summary and "sex is 0.300" in summary and "rollout.require_live_fairness" in summary
    assert json.loads(details)["check"] == "live_fairness"

    later = analyse_and_act(home, warehouse, spec, tracker, 30, now=now + timedelta(minutes=5))  # the next analysis
    assert later.change is None and later.refused is not None  # refused again, for the same reason ...
    with duckdb.connect(str(warehouse), read_only=True) as connection:  # ... and said once in the trail (and alerts)
        assert connection.execute("select count(*) from audit.events where model = 'credit' and "
                                  "event = 'promotion_refused'").fetchall() == [(1,)]

    spec.rollout.require_live_fairness = False  # the same evidence, no requirement: promoted
    run = analyse_and_act(home, warehouse, spec, tracker, 30, now=now)
    assert run.change is not None and run.change.kind == "canary_promoted", run.text()
    assert tracker.alias_version("credit", CHAMPION) == "2"


def service_rows(logged: pd.DataFrame) -> list[dict]:
    """A :func:`binary_log` frame as the service hands it to the log writer (inputs and sensitive values as dicts)."""
    return [{**{k: v for k, v in record.items() if not k.startswith(SENSITIVE_PREFIX)}, "model": "credit",
             "probabilities": json.loads(record["probabilities"]), "latency_ms": 1.0, "inputs": {"x1": 1.0},
             "sensitive": {"sex": record["sensitive.sex"], "age": record["sensitive.age"]}}
            for record in logged.to_dict("records")]


def test_promotion_reads_only_the_judged_versions_rows_and_columns_and_judges_them_as_over_the_whole_log(
        home, tmp_path, monkeypatch):
    """The promote-time check asks the log for one version's rows and the columns it judges (pushed into the Parquet
    scan); the champion's and a canary's rows beside them change nothing of its verdict."""
    monkeypatch.delenv("MLPLATFORM_POLICIES", raising=False)
    fairness = ("fairness: {sensitive: [sex, age], bands: {age: [30, 50]}, max_demographic_parity_difference: 0.1, "
                "min_group_rows: 20}\n")
    spec_yaml = CREDIT_SPEC + fairness + "features: {numeric: [x1]}\npartitions: {start: 2024-01-01, end: 2024-01-15}\n"
    folder = spec_folder(tmp_path, {"credit.yaml": spec_yaml + "policy: fair_live\n", "policies.yaml": FAIR_LIVE_POLICY})
    [spec] = load_specs(folder, check_data=False)
    champion = binary_log(version="1", role="champion", female_rate=0.9, male_rate=0.1, seed=1)  # the same requests
    challenger = binary_log(version="2", role="shadow")  # 0.6 against 0.3: unfair
    canary = binary_log(version="3", role="canary", female_rate=0.45, male_rate=0.45, seed=2)
    canary["request_id"] = "c" + canary["request_id"]
    write_segments(home / "prediction_log", service_rows(pd.concat([champion, challenger, canary])),
                   {"credit": {"x1": "float64", "sensitive.sex": "string", "sensitive.age": "string"}})

    read = live_fairness.version_predictions(home, spec, "2")
    assert list(read.columns) == ["version", "label", "score", "sensitive.sex", "sensitive.age"]
    assert len(read) == 1200 and set(read["version"]) == {"2"}
    whole = read_prediction_log(home, "credit")
    assert len(whole) == 3600 and "x1" in whole.columns
    pd.testing.assert_frame_equal(read, whole.loc[whole["version"] == "2", list(read.columns)].reset_index(drop=True))

    check = live_fairness.promotion_refusal(spec, home)
    verdict = check(None, "2")
    over_whole = live_fairness.judge_version("credit", "binary", spec.fairness, whole, "2", "policy 'fair_live'",
                                             spec.decision_threshold)
    assert verdict.refused and verdict.reason() == over_whole.reason() and "on sex is 0.300" in verdict.reason()
    assert [m.row() for m in verdict.measures] == [m.row() for m in over_whole.measures]
    assert check(None, "3") is None  # fair, though the champion beside it is not
    assert "no live predictions of v4 yet" in check(None, "4").reason()
