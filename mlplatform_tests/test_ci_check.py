"""`mlplatform check`, the CI gate: a change that degrades a model exits non-zero naming the gate, an unchanged one
exits 0, nothing is registered; and the example GitHub Actions workflow names commands the CLI has."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from mlplatform.cli import build_parser, main
from mlplatform.lib.ci_check import ModelCheck, report
from mlplatform.lib.gates import GateOutcome
from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform_tests.helpers import load_definitions, run_weeks
from mlplatform_tests.test_model_import import IRIS_SPEC, iris_rows

WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "ci" / "github-actions.yml"
AUTO_SPEC = IRIS_SPEC.replace("approval: manual", "approval: auto\n  auto_promote: immediate")  # deploy = champion
TEAM_MODULE = """
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier


def build(max_depth=3):
    # the change under review: the preprocessing keeps the sepal columns only
    keep = ColumnTransformer([("sepals", "passthrough", ["sepal_length", "sepal_width"])])
    return Pipeline([("select", keep), ("tree", DecisionTreeClassifier(max_depth=max_depth, random_state=0))])
"""
DEGRADED_SPEC = AUTO_SPEC.replace("params: {max_depth: 3}", "params: {max_depth: 1}")


def test_the_report_names_each_failed_gate_and_the_models():
    passed = ModelCheck("iris", "2024-01-29", "2024-01-01..2024-01-29", 120, "3",
                        [GateOutcome("absolute_threshold", True, "macro_f1 0.95 meets the bar >= 0.8")])
    failed = ModelCheck("tickets", "2024-01-29", "2024-01-01..2024-01-29", 90, "7",
                        [GateOutcome("absolute_threshold", True, "ok"),
                         GateOutcome("beat_champion", False, "macro_f1: challenger 0.41 vs champion v7 0.93; "
                                     "significantly worse")])
    broken = ModelCheck("churn", problem="training for week 2024-01-29 failed: ValueError: bad")
    lines = report([passed, failed, broken])
    assert lines[0].startswith("ok    iris: week 2024-01-29") and "1 gates passed" in lines[0]
    assert "FAIL  tickets" in lines[2] and "failed gate(s): beat_champion" in lines[2]
    assert "        FAIL  beat_champion: macro_f1: challenger 0.41 vs champion v7 0.93; significantly worse" in lines
    assert "FAIL  churn: training for week 2024-01-29 failed: ValueError: bad" in lines
    assert lines[-1] == ("check: 1 of 3 model(s) passed every gate; FAILED: tickets, churn (nothing was registered "
                         "or promoted)")


def test_check_refuses_invalid_specs_and_unknown_models(home, spec_dir, capsys):
    spec_dir({"iris.yaml": IRIS_SPEC.replace("task: multiclass", "task: multiclas")}, {"iris.csv": iris_rows()})
    assert main(["check"]) == 1
    assert "FAIL  specs: 1 problem(s)" in capsys.readouterr().err
    spec_dir({"iris.yaml": IRIS_SPEC}, {"iris.csv": iris_rows()})
    assert main(["check", "--model", "irsi"]) == 1
    assert "no model named irsi; the specs define iris" in capsys.readouterr().err


def test_check_without_a_champion_runs_the_other_gates(home, spec_dir, capsys):
    spec_dir({"iris.yaml": IRIS_SPEC}, {"iris.csv": iris_rows()})
    assert main(["check", "--model", "iris"]) == 0
    out = capsys.readouterr().out
    assert "ok    iris: week 2024-01-29, trained on 2024-01-01..2024-01-29 (120 rows), against no champion yet" in out
    assert "pass  beat_champion: first model for week 2024-01-29" in out
    assert "pass  training_data_drift" in out and "pass  prediction_sanity" in out


@pytest.mark.slow
def test_check_fails_a_degrading_change_naming_the_gate_passes_an_unchanged_one_and_run_deploys_a_good_one(
        home, spec_dir, instance, capsys, monkeypatch):
    folder = spec_dir({"iris.yaml": AUTO_SPEC}, {"iris.csv": iris_rows()})
    assert run_weeks(load_definitions(), "iris", instance, "2024-01-01", "2024-01-29").success
    tracker = Tracker.under(home / "mlflow")
    champion = tracker.alias_version("iris", CHAMPION)
    assert champion is not None and tracker.version_tags("iris", champion)["week"] == "2024-01-29"
    versions = len(tracker.client.search_model_versions("name = 'iris'"))
    warehouse = (home / "warehouse.duckdb").read_bytes()
    capsys.readouterr()

    assert main(["check", "--model", "iris", "--against", "champion"]) == 0  # the spec the champion was trained under
    out = capsys.readouterr().out
    assert f"against champion v{champion}: " in out and "pass  beat_champion" in out

    (folder / "iris.yaml").write_text(DEGRADED_SPEC)  # the pull request: a stump instead of a depth-3 tree
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    print(out)  # the report CI shows (in the test log)
    assert "FAIL  iris: week 2024-01-29" in out and "failed gate(s): " in out
    assert "FAIL  beat_champion: macro_f1: challenger" in out and "significantly worse" in out
    assert "FAILED: iris" in out

    # a change to the team's preprocessing code (estimator.factory) that loses the petal measurements
    team = folder.parent / "team" / "iris_team"
    team.mkdir(parents=True)
    (team / "__init__.py").write_text("")
    (team / "pipelines.py").write_text(TEAM_MODULE)
    monkeypatch.syspath_prepend(str(team.parent))
    monkeypatch.setenv("MLPLATFORM_ESTIMATOR_MODULES", "iris_team")
    (folder / "iris.yaml").write_text(AUTO_SPEC.replace("class: sklearn.tree.DecisionTreeClassifier",
                                                        "factory: iris_team.pipelines.build"))
    assert main(["check", "--model", "iris"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  beat_champion" in out and "FAILED: iris" in out

    assert len(tracker.client.search_model_versions("name = 'iris'")) == versions  # nothing registered
    assert tracker.alias_version("iris", CHAMPION) == champion  # nothing promoted
    assert (home / "warehouse.duckdb").read_bytes() == warehouse  # nothing written

    # the change that passes check is merged: `run` (the workflow's deploy job) retrains the newest week through the
    # normal gates, and approval: auto (auto_promote: immediate) makes it champion (the service hot-swaps to it)
    (folder / "iris.yaml").write_text(AUTO_SPEC.replace("params: {max_depth: 3}", "params: {max_depth: 4}"))
    assert main(["check"]) == 0
    capsys.readouterr()
    assert main(["run", "--model", "iris"]) == 0
    out = capsys.readouterr().out
    deployed = tracker.alias_version("iris", CHAMPION)
    assert deployed not in (None, champion) and "ok    iris: iris_retrain for week 2024-01-29" in out
    assert tracker.version_tags("iris", deployed)["gates"] == "passed"
    assert main(["run", "--model", "iris", "--week", "2024-02-05"]) == 1
    assert "--week 2024-02-05: not a complete week of iris" in capsys.readouterr().err


def workflow_commands(workflow: dict) -> list[list[str]]:
    """Every `mlplatform ...` command line in the workflow's run steps."""
    found = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in str(step.get("run", "")).splitlines():
                line = line.strip()
                if line.startswith("mlplatform "):
                    found.append(shlex.split(line.replace("${{", "'${{").replace("}}", "}}'"))[1:])
    return found


def test_the_example_workflow_parses_and_names_commands_the_cli_has():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers and triggers["push"]["branches"] == ["main"]
    commands = workflow_commands(workflow)
    assert {c[0] for c in commands} >= {"check", "validate", "run"}
    parser = build_parser()
    for command in commands:
        parser.parse_args(command)  # exits (SystemExit) on a command or option the CLI does not have
