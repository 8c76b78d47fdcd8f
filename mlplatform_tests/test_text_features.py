"""Free-text features (``features.text``): TF-IDF by default, length limits at the service (422), drift on text
through per-document numbers, explanations that name words.

The data are GENERATED support tickets (:func:`generated_tickets`): a multiclass topic decided by the words of the
message, not a real dataset."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from mlplatform.demo.support_tickets import generated_tickets
from mlplatform.lib.drift import calibrated_drift, profile_reference
from mlplatform.lib.explain import Explainer, background_rows
from mlplatform.lib.text import add_current_proxies, add_reference_proxies, proxy_columns
from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform.lib.training import build_pipeline, split_xy
from mlplatform.serving.schema import RecordProblems, RecordSchema
from mlplatform.specs import ModelSpec
from mlplatform_tests.helpers import load_definitions, run_weeks, warehouse_query

TICKETS_SPEC = """
name: tickets
description: GENERATED support tickets (mlplatform/demo/support_tickets.py), not real data
task: multiclass
source:
  path: tickets.csv
  timestamp: ts
  key: [id]
target: topic
features:
  numeric: [tenure_months]
  text: [message]
  text_max_chars: 200
columns:
  topic: {categories: [billing, technical, account]}
partitions:
  start: 2024-01-01
  end: 2024-01-29
estimator:
  class: sklearn.linear_model.LogisticRegression
  params: {max_iter: 500}
gates:
  metric: macro_f1
  threshold: 0.6
rollout:
  approval: auto
  auto_promote: immediate  # champion at once: this test is not about the canary stage (test_canary.py)
"""


def spec() -> ModelSpec:
    return ModelSpec.model_validate(yaml.safe_load(TICKETS_SPEC))


def test_the_default_pipeline_encodes_text_by_tf_idf_and_explanations_name_the_words():
    model_spec = spec()
    rows = generated_tickets()
    x, y = split_xy(rows, model_spec)
    pipeline = build_pipeline(model_spec).fit(x, y)
    vocabulary = pipeline.named_steps["preprocess"].named_transformers_["text:message"][-1].vocabulary_
    assert {"refund", "crash", "password"} <= set(vocabulary)
    assert (pipeline.predict(x) == y).mean() > 0.9  # the words decide the topic

    explainer = Explainer(pipeline, "multiclass", model_spec.feature_columns, background=background_rows(x, 50))
    ticket = pd.DataFrame([{"tenure_months": 12.0, "message": "hello my invoice shows I was charged twice"}])
    [explained] = explainer.explain(ticket)
    assert explained.output == "log-probability of 'billing'"
    [text] = [c for c in explained.top if c.feature == "message"]
    named = [w for w, _ in text.words]
    assert set(named[:3]) <= {"invoice", "charged", "twice"}  # the billing words moved it most
    assert text.as_dict()["words"][0]["word"] == named[0]


def test_a_tree_model_on_text_is_explained_by_tree_shap_and_its_words_are_their_own_shap_values():
    data = yaml.safe_load(TICKETS_SPEC)
    del data["estimator"]  # the default: HistGradientBoosting, on the dense TF-IDF matrix
    model_spec = ModelSpec.model_validate(data)
    x, y = split_xy(generated_tickets(), model_spec)
    pipeline = build_pipeline(model_spec).fit(x, y)
    explainer = Explainer(pipeline, "multiclass", model_spec.feature_columns)
    assert explainer.method == "tree_shap"
    ticket = pd.DataFrame([{"tenure_months": 30.0, "message": "please delete my profile and email"}])
    [explained] = explainer.explain(ticket)
    assert explained.output == "score of 'account'"
    [text] = [c for c in explained.top if c.feature == "message"]
    assert {w for w, _ in text.words[:2]} <= {"delete", "profile", "email"}
    assert abs(text.words[0][1]) <= abs(text.contribution) + 1e-9  # a share of the feature's own contribution


def test_the_service_refuses_a_text_over_the_limit_or_not_a_text_naming_the_field():
    schema = RecordSchema(spec())
    assert schema.check([{"tenure_months": 3, "message": "login error"}]) == [
        {"tenure_months": 3.0, "message": "login error"}]
    assert schema.check([{"tenure_months": 3, "message": None}]) == [{"tenure_months": 3.0, "message": None}]
    with pytest.raises(RecordProblems) as refused:
        schema.check([{"tenure_months": 3, "message": "x" * 201}, {"tenure_months": 3, "message": 42}])
    problems = refused.value.problems
    assert [(p["record"], p["field"]) for p in problems] == [(0, "message"), (1, "message")]
    assert "is too long: 201 characters, at most 200" in problems[0]["message"]
    assert "must be a text" in problems[1]["message"]
    assert schema.json_schema()["properties"]["message"]["maxLength"] == 200


def test_text_drift_flags_new_vocabulary_and_not_a_week_like_the_reference():
    text = ["message"]
    reference_rows = generated_tickets(weeks=2, seed=1)
    same = generated_tickets(weeks=1, seed=2)
    shifted = generated_tickets(weeks=1, seed=3, new_product_from_week=0)
    reference, vocabularies = add_reference_proxies(reference_rows, text)
    assert reference["message.unseen"].dropna().between(0, 1).all()
    profile = profile_reference(reference, proxy_columns(text), [])
    calm = calibrated_drift(profile, add_current_proxies(same, text, vocabularies), 0.5)
    assert not [c.column for c in calm.drifted]
    moved = calibrated_drift(profile, add_current_proxies(shifted, text, vocabularies), 0.5)
    assert {c.column for c in moved.drifted} == {"message.words", "message.unseen"}  # longer, and new words


def test_the_training_data_gate_compares_text_columns_like_drift():
    from mlplatform.lib.lifecycle import training_data_check

    model_spec = spec()
    train = generated_tickets(weeks=2, seed=1)
    alike = training_data_check(model_spec, train, generated_tickets(weeks=1, seed=2), "recent inputs")
    assert alike.passed, alike.reason
    moved = training_data_check(model_spec, train, generated_tickets(weeks=1, seed=3, new_product_from_week=0),
                                "recent inputs")
    assert not moved.passed and set(moved.facts["drifted"]) == {"message.words", "message.unseen"}


@pytest.mark.slow
def test_a_ticket_classifier_trains_weekly_serves_text_over_http_and_its_drift_covers_the_text(
        home, spec_dir, instance):
    from mlplatform.serving.app import ServingConfig
    from mlplatform.specs import load_specs
    from mlplatform_tests.test_serving import LiveServer

    folder = spec_dir({"tickets.yaml": TICKETS_SPEC}, {"tickets.csv": generated_tickets(new_product_from_week=3)})
    assert run_weeks(load_definitions(), "tickets", instance, "2024-01-01", "2024-01-22").success
    tracker = Tracker.under(home / "mlflow")
    assert tracker.alias_version("tickets", CHAMPION) is not None
    evaluations = warehouse_query(home, "select week, value from tickets.evaluations order by week")
    assert (evaluations["value"] > 0.8).all()  # macro F1 from the words
    drift = warehouse_query(home, "select week, \"column\", drifted from tickets.drift where role = 'feature' "
                                  "order by week, \"column\"")
    last = drift[drift["week"] == drift["week"].max()].set_index("column")["drifted"].to_dict()
    assert set(last) == {"tenure_months", "message.words", "message.unseen"}
    assert last["message.unseen"]  # the week that names new products

    config = ServingConfig(home=home, specs=load_specs(folder), tracker=tracker, poll_seconds=0.05,
                           flush_seconds=0.1)
    with LiveServer(config) as server:
        answer = server.predict("tickets", [{"tenure_months": 4, "message": "app crash on the login screen"}])
        assert answer.status_code == 200 and answer.json()["predictions"][0]["prediction"] == "technical"
        refused = server.predict("tickets", [{"tenure_months": 4, "message": "bug " * 60}])
        assert refused.status_code == 422
        assert refused.json()["problems"][0]["field"] == "message"
        explained = server.client.post("/v1/models/tickets/explain", json={"records": [
            {"tenure_months": 4, "message": "please reset my password"}]})
        assert explained.status_code == 200, explained.text
        [text] = [c for c in explained.json()["explanations"][0]["top_contributions"] if c["feature"] == "message"]
        assert {w["word"] for w in text["words"][:2]} <= {"reset", "password"}


def test_the_support_ticket_example_is_the_generator_s_output_and_validates(tmp_path, monkeypatch):
    """examples/support_tickets: its CSV is what scripts/make_support_tickets.py writes (GENERATED, reproducible),
    and its spec passes every validate check with text features."""
    import importlib.util

    from mlplatform.lib.settings import REPO_DIR
    from mlplatform.specs import load_specs

    script = importlib.util.spec_from_file_location("make_support_tickets", REPO_DIR / "scripts" / "make_support_tickets.py")
    module = importlib.util.module_from_spec(script)
    script.loader.exec_module(module)
    folder = REPO_DIR / "examples" / "support_tickets"
    committed = pd.read_csv(folder / "support_tickets.csv")
    generated = generated_tickets(weeks=module.WEEKS, per_week=module.PER_WEEK, seed=7,
                                  new_product_from_week=module.NEW_PRODUCT_FROM_WEEK)
    pd.testing.assert_frame_equal(committed, generated.astype(committed.dtypes.to_dict()), check_dtype=False)
    monkeypatch.setenv("MLPLATFORM_HOME", str(tmp_path))
    (example,) = load_specs(folder)
    assert example.task == "multiclass" and example.features.text == ["message"]
    assert committed["ts"].min() >= str(example.partitions.start) and "zephyr" in " ".join(committed["message"].dropna())
