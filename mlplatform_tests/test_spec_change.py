"""A version whose gates ran under an older spec (in a way that matters to the gates) is refused by
`mlplatform promote`, `mlplatform rollback` and the UI approve job; editing a description is not such a change."""

from __future__ import annotations

import textwrap

import yaml

from mlplatform.cli import main
from mlplatform.lib.spec_hash import GATES_HASH_TAG, changed_gate_sections, spec_tags
from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform.specs import ModelSpec
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks, warehouse_query

MODEL_SPEC = TOY_SPEC + """
estimator:
  class: sklearn.linear_model.Ridge
gates:
  threshold: 1.0
  training_data: {enabled: false}
rollout:
  approval: manual
"""


def _spec(text: str) -> ModelSpec:
    return ModelSpec.model_validate(yaml.safe_load(textwrap.dedent(text)))


def test_keys_added_since_versions_were_recorded_leave_the_recorded_hashes_alone_at_their_defaults():
    """The toy spec's hashes as mlplatform recorded them before `policy` and `gates.beat_champion.test`/`margin`
    existed (computed with the code of commit 7a259f9): a version trained then must still match a spec that does not
    use the new keys, or every existing version would be refused as "gated under an older spec"."""
    tags = spec_tags(_spec(TOY_SPEC))
    assert tags["spec.hash"] == "1bcb227286b95b2b0874e7e37ec11019f754892a619e5bd1ca9a99a54692c260"
    assert tags[GATES_HASH_TAG] == "e607c5d3538284e141fa0688dd34ba9e3b50a2f95ce97bcfb6cb16dfa3b2dd94"
    superiority = spec_tags(_spec(TOY_SPEC + "gates: {beat_champion: {test: superiority}}\n"))
    assert changed_gate_sections(tags, superiority) == ["gates"]  # set, the new key is a gate change
    # rollout.auto_promote's default became `canary`: a spec that leaves it out keeps its hash, the default spelled out
    # is the same spec, and the explicit opt-out `immediate` is another spec (not another gate: rollout is no gate section)
    assert spec_tags(_spec(TOY_SPEC + "rollout: {auto_promote: canary}\n")) == tags
    opted_out = spec_tags(_spec(TOY_SPEC + "rollout: {auto_promote: immediate}\n"))
    assert opted_out["spec.hash"] != tags["spec.hash"] and changed_gate_sections(tags, opted_out) == []


def test_only_sections_that_matter_to_the_gates_count_as_a_change():
    base = _spec(MODEL_SPEC)
    same = _spec(MODEL_SPEC.replace("name: toy", "name: toy\ndescription: reworded\nowner: team:risk")
                 .replace("sklearn.linear_model.Ridge", "sklearn.linear_model.LinearRegression"))
    reformatted = _spec(MODEL_SPEC.replace("threshold: 1.0", "threshold: 1"))  # normalized, not file bytes
    stricter = _spec(MODEL_SPEC.replace("threshold: 1.0", "threshold: 0.5"))
    fewer = _spec(MODEL_SPEC.replace("numeric: [x1, x2]", "numeric: [x1]"))
    assert changed_gate_sections(spec_tags(base), spec_tags(same)) == []
    assert changed_gate_sections(spec_tags(base), spec_tags(reformatted)) == []
    assert changed_gate_sections(spec_tags(base), spec_tags(stricter)) == ["gates"]
    assert changed_gate_sections(spec_tags(base), spec_tags(fewer)) == ["features"]
    assert changed_gate_sections({"gates": "passed"}, spec_tags(base)) is None  # recorded nothing: unknown


def test_a_decision_threshold_is_a_gate_change_and_its_default_spelled_out_is_not():
    binary = MODEL_SPEC.replace("task: regression", "task: binary").replace("sklearn.linear_model.Ridge",
                                                                            "sklearn.linear_model.LogisticRegression")
    base = _spec(binary)
    spelled_out = _spec(binary + "evaluation: {decision_threshold: 0.5}\n")
    moved = _spec(binary + "evaluation: {decision_threshold: 0.7}\n")
    assert spec_tags(spelled_out) == spec_tags(base)  # spelling the default out changes nothing
    # at its default the section adds no hash: versions recorded before the key existed still match
    assert not any("evaluation" in tag for tag in spec_tags(base)) and "spec.gates_hash.evaluation" in spec_tags(moved)
    assert changed_gate_sections(spec_tags(base), spec_tags(moved)) == ["evaluation"]
    assert changed_gate_sections(spec_tags(moved), spec_tags(base)) == ["evaluation"]


def test_promote_rollback_and_the_ui_job_refuse_a_version_trained_under_an_older_spec(home, spec_dir, instance,
                                                                                      capsys):
    folder = spec_dir({"toy.yaml": MODEL_SPEC}, {"toy.csv": toy_rows()})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", "2024-01-15",
                     assets=["raw", "features", "model", "evaluation"]).success
    tracker = Tracker.under(home / "mlflow")
    trained_under = tracker.version_tags("toy", "1")[GATES_HASH_TAG]
    assert main(["promote", "toy", "--version", "1", "--by", "alice", "--reason", "reviewed"]) == 0

    (folder / "toy.yaml").write_text(textwrap.dedent(MODEL_SPEC).replace("name: toy", "name: toy\nowner: team:risk"))
    assert main(["promote", "toy", "--version", "2", "--by", "alice", "--reason", "reviewed"]) == 0  # owner only

    (folder / "toy.yaml").write_text(textwrap.dedent(MODEL_SPEC).replace("numeric: [x1, x2]", "numeric: [x1]"))
    now = spec_tags(_spec(MODEL_SPEC.replace("numeric: [x1, x2]", "numeric: [x1]")))[GATES_HASH_TAG]
    assert main(["rollback", "toy", "--by", "bob", "--reason", "live metric fell"]) == 1
    err = capsys.readouterr().err
    assert "toy v1: its gates ran under an older spec (features changed since" in err
    assert trained_under[:12] in err and now[:12] in err and "nothing changed" in err
    assert main(["promote", "toy", "--version", "1", "--by", "alice"]) == 1
    assert "its gates ran under an older spec (features changed" in capsys.readouterr().err

    approve = load_definitions().resolve_job_def("toy_approve")  # the code location reloaded with the new spec
    refused = approve.execute_in_process(instance=instance, raise_on_error=False, run_config={
        "ops": {"toy_approve_champion": {"config": {"approved_by": "alice", "reason": "x", "version": "1"}}}})
    assert not refused.success
    assert "its gates ran under an older spec (features changed" in str(refused.all_events)
    assert tracker.alias_version("toy", CHAMPION) == "2"

    assert main(["promote", "toy", "--version", "1", "--by", "alice", "--reason", "audited", "--force"]) == 0
    reason = warehouse_query(home, "select reason from audit.alias_changes order by changed_at")["reason"].iloc[-1]
    assert reason.startswith("audited [forced with --force: toy v1: its gates ran under an older spec (features")
