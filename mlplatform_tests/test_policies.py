"""Platform policies: a spec under a policy cannot switch off what the policy makes mandatory (refused at load, the
policy and the key named); the policy file is never read as a spec; a broken policy file names its own key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlplatform.cli import main
from mlplatform.specs import SpecError, load_specs
from mlplatform.specs.loader import load_spec_named
from mlplatform_tests.conftest import TOY_SPEC, toy_rows

FAIR = """
fairness:
  sensitive: [region]
"""


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def problems_of(folder: Path) -> list[tuple[str, str, str]]:
    with pytest.raises(SpecError) as raised:
        load_specs(folder, check_data=False)
    return [(Path(p.file).name, p.key, p.message) for p in raised.value.problems]


def test_a_regulated_spec_that_switches_a_mandatory_gate_off_is_refused_naming_the_policy_and_the_key(tmp_path):
    folder = write(tmp_path / "specs", {
        "auto.yaml": TOY_SPEC.replace("name: toy", "name: auto") + FAIR + "policy: regulated\nrollout: {approval: auto}\n",
        "unfair.yaml": TOY_SPEC.replace("name: toy", "name: unfair") + "policy: regulated\n",
        "blind.yaml": TOY_SPEC.replace("name: toy", "name: blind") + FAIR
        + "policy: regulated\ngates: {training_data: {enabled: false}}\n",
        "ok.yaml": TOY_SPEC.replace("name: toy", "name: ok") + FAIR + "policy: regulated\n",
        "free.yaml": TOY_SPEC.replace("name: toy", "name: free") + "rollout: {approval: auto}\n",
    })
    found = problems_of(folder)
    assert {(file, key) for file, key, _ in found} == {
        ("auto.yaml", "rollout.approval"), ("unfair.yaml", "fairness"), ("blind.yaml", "gates.training_data.enabled")}
    assert all("policy 'regulated'" in message for _, _, message in found)
    assert "found 'auto'" in next(m for f, _, m in found if f == "auto.yaml")
    # the compliant regulated spec and the spec under no policy are not the problem
    for good in ("auto.yaml", "unfair.yaml", "blind.yaml"):
        (folder / good).unlink()
    assert sorted(s.name for s in load_specs(folder, check_data=False)) == ["free", "ok"]


def test_the_policy_file_defines_policies_and_a_default_and_is_never_read_as_a_spec(tmp_path, monkeypatch):
    monkeypatch.delenv("MLPLATFORM_POLICIES", raising=False)
    folder = write(tmp_path / "specs", {
        "policies.yaml": """
            default: live_first
            policies:
              live_first: {min_canary_percent: 20}
        """,
        "quiet.yaml": TOY_SPEC.replace("name: toy", "name: quiet") + "rollout: {canary_percent: 5}\n",
        "typo.yaml": TOY_SPEC.replace("name: toy", "name: typo") + "policy: regulatd\n",
        "loud.yaml": TOY_SPEC.replace("name: toy", "name: loud") + "rollout: {canary_percent: 25}\n",
    })
    found = problems_of(folder)
    assert [(f, k) for f, k, _ in found] == [("quiet.yaml", "rollout.canary_percent"), ("typo.yaml", "policy")]
    quiet, typo = (m for _, _, m in found)
    assert "found 5" in quiet and "at least 20" in quiet and "the policy file's default" in quiet
    assert "found 'regulatd'" in typo and "live_first" in typo and "regulated" in typo
    # one model's load (as the CLI does it) applies the same policy
    toy_rows().to_csv(folder / "toy.csv", index=False)
    with pytest.raises(SpecError):
        load_spec_named(folder, "quiet")
    assert load_spec_named(folder, "loud").rollout.canary_percent == 25

    # MLPLATFORM_POLICIES, set by the platform, wins over the file beside the specs
    central = tmp_path / "central.yaml"
    central.write_text("policies: {}\n")
    monkeypatch.setenv("MLPLATFORM_POLICIES", str(central))
    assert [(f, k) for f, k, _ in problems_of(folder)] == [("typo.yaml", "policy")]  # no default there


def test_a_broken_policy_file_names_its_file_and_key(tmp_path, monkeypatch):
    monkeypatch.delenv("MLPLATFORM_POLICIES", raising=False)
    folder = write(tmp_path / "specs", {"toy.yaml": TOY_SPEC, "policies.yaml": """
        policies:
          strict: {require_fairnes: true}
    """})
    [(file, key, message)] = problems_of(folder)
    assert file == "policies.yaml" and key == "policies.strict.require_fairnes" and "require_fairness" in message
    write(folder, {"policies.yaml": "default: nobody\n"})
    [(file, key, message)] = problems_of(folder)
    assert file == "policies.yaml" and key == "default" and "found 'nobody'" in message


def test_validate_reports_a_policy_breach_with_file_and_key(spec_dir, capsys):
    spec_dir({"toy.yaml": TOY_SPEC + "policy: regulated\n"}, {"toy.csv": toy_rows()})
    assert main(["validate"]) != 0
    err = capsys.readouterr()
    text = err.out + err.err
    assert "toy.yaml" in text and "fairness" in text and "policy 'regulated'" in text


def test_a_policy_minimum_canary_share_refuses_a_lower_first_ramp_step_and_immediate_auto_promotion(tmp_path,
                                                                                                   monkeypatch):
    """The share a new version starts at (the ramp's first step, else canary_percent) is what the minimum checks; an
    auto-approved version that becomes champion at once would meet no live traffic at all."""
    monkeypatch.delenv("MLPLATFORM_POLICIES", raising=False)
    under = "policy: live_first\n"
    folder = write(tmp_path / "specs", {
        "policies.yaml": "policies:\n  live_first: {min_canary_percent: 20}\n",
        "low_ramp.yaml": TOY_SPEC.replace("name: toy", "name: low_ramp") + under
        + "rollout: {canary_percent: 30, ramp: [5, 25, 50]}\n",
        "at_once.yaml": TOY_SPEC.replace("name: toy", "name: at_once") + under
        + "rollout: {approval: auto, auto_promote: immediate, canary_percent: 20}\n",
        "ramped.yaml": TOY_SPEC.replace("name: toy", "name: ramped") + under
        + "rollout: {approval: auto, auto_promote: canary, canary_percent: 5, ramp: [20, 50]}\n",
    })
    found = problems_of(folder)
    assert [(f, k) for f, k, _ in found] == [("at_once.yaml", "rollout.auto_promote"), ("low_ramp.yaml", "rollout.ramp")]
    at_once, low_ramp = (m for _, _, m in found)
    assert "policy 'live_first'" in low_ramp and "starts at 5%" in low_ramp and "at least 20%" in low_ramp
    assert "first step 20 or more" in low_ramp  # the fix
    assert "policy 'live_first'" in at_once and "set rollout.auto_promote: canary" in at_once
    for refused in ("low_ramp.yaml", "at_once.yaml"):
        (folder / refused).unlink()
    [ramped] = load_specs(folder, check_data=False)  # canary_percent 5 is replaced by the ramp's first step, 20
    assert ramped.name == "ramped" and ramped.policy_rules.min_canary_percent == 20
