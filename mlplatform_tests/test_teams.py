"""Teams on one platform: the team of a spec, spec roots of team folders and several roots, names claimed by two
teams, per-team reports, and one team's broken spec leaving the other teams' models loaded and running."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplatform.specs import SpecError, load_spec_set, load_specs
from mlplatform_tests.conftest import TOY_SPEC, toy_rows


def team_root(root: Path, teams: dict[str, dict[str, str]]) -> Path:
    """``root/<team>/<file>`` for each team's spec texts, each team folder with its own toy.csv."""
    for team, specs in teams.items():
        folder = root / team
        folder.mkdir(parents=True, exist_ok=True)
        toy_rows().to_csv(folder / "toy.csv", index=False)
        for name, text in specs.items():
            (folder / name).write_text(text)
    return root


def named(model: str, extra: str = "") -> str:
    return TOY_SPEC.replace("name: toy", f"name: {model}") + extra


def test_team_key_owners_and_tags_reach_dagster_owners():
    from mlplatform.defs.metadata import owners, team_tags
    from mlplatform.specs import ModelSpec

    spec = ModelSpec.model_validate({**_toy_mapping(), "team": "fraud", "owners": ["alice@bank.example", "team:oncall"],
                                     "owner": "bob@bank.example"})
    assert owners(spec) == ["team:fraud", "alice@bank.example", "team:oncall", "bob@bank.example"]
    assert team_tags(spec) == {"team": "fraud"}
    legacy = ModelSpec.model_validate({**_toy_mapping(), "owner": "team:risk"})  # the old key alone: its team
    assert legacy.team_name == "risk" and owners(legacy) == ["team:risk"]
    assert ModelSpec.model_validate(_toy_mapping()).team_name is None


def _toy_mapping() -> dict:
    import yaml

    return yaml.safe_load(TOY_SPEC)


def test_bad_team_and_owner_values_are_refused_naming_the_key(tmp_path):
    root = team_root(tmp_path / "specs", {"fraud": {"a.yaml": named("a", "team: Fraud Team\n"),
                                                    "b.yaml": named("b", "owners: [alice]\n")}})
    with pytest.raises(SpecError) as caught:
        load_specs(root)
    text = str(caught.value)
    assert "a.yaml: team: found 'Fraud Team'; a team name is lowercase letters" in text
    assert "b.yaml: owners: found 'alice'; an owner is an email address" in text


def test_team_folders_give_the_team_and_a_mismatch_names_both(tmp_path):
    root = team_root(tmp_path / "specs", {"fraud": {"score.yaml": named("score")},
                                          "ads": {"ctr.yaml": named("ctr", "team: ads\n"),
                                                  "stray.yaml": named("stray", "team: fraud\n")}})
    (root / "demo").mkdir()
    (root / "demo" / "production.yaml").write_text("production: {}\n")  # the demo's plan: never a team folder
    loaded = load_spec_set(root)
    assert {spec.name: spec.team_name for spec in loaded.specs} == {"score": "fraud", "ctr": "ads"}
    [[problem]] = loaded.broken.values()
    assert str(problem).startswith(f"{root / 'ads' / 'stray.yaml'}: team: found 'fraud', but the file is in the "
                                   "folder of team 'ads'")
    assert str(root / "fraud") in problem.message  # the fix names where the file belongs
    reports = loaded.by_team()
    assert reports["ads"].summary() == f"team ads: 1 model(s) loaded (ctr); 1 broken spec file(s): {root / 'ads' / 'stray.yaml'}"
    assert reports["fraud"].summary() == "team fraud: 1 model(s) loaded (score)"


def test_two_teams_claiming_one_model_name_are_both_refused_naming_both_files(tmp_path):
    root = team_root(tmp_path / "specs", {"fraud": {"churn.yaml": named("churn")}, "ads": {"churn.yaml": named("churn")},
                                          "search": {"rank.yaml": named("rank")}})
    loaded = load_spec_set(root)
    assert [spec.name for spec in loaded.specs] == ["rank"]
    ads, fraud = root / "ads" / "churn.yaml", root / "fraud" / "churn.yaml"
    assert set(loaded.broken) == {ads.resolve(), fraud.resolve()}
    for file, other, team in ((ads, fraud, "fraud"), (fraud, ads, "ads")):
        [problem] = loaded.broken[file.resolve()]
        assert problem.key == "name" and str(other) in problem.message and f"(team {team})" in problem.message


def test_several_spec_roots_from_a_path_list(tmp_path, monkeypatch):
    from mlplatform.lib.settings import load_settings
    from mlplatform.specs import declared_names, load_spec_named

    first = team_root(tmp_path / "platform", {"fraud": {"score.yaml": named("score")}})
    second = tmp_path / "ads-repo"
    second.mkdir()
    toy_rows().to_csv(second / "toy.csv", index=False)
    (second / "ctr.yaml").write_text(named("ctr", "team: ads\n"))
    monkeypatch.setenv("MLPLATFORM_SPECS", f"{first}:{second}")
    settings = load_settings()
    assert settings.spec_roots == (first, second) and settings.specs_dir == first
    assert sorted(s.name for s in load_specs(settings.spec_roots)) == ["ctr", "score"]
    assert set(declared_names(settings.spec_roots)) == {"ctr", "score"}
    assert load_spec_named(settings.spec_roots, "score").team_name == "fraud"


def test_validate_reports_per_team_and_exits_nonzero_naming_the_broken_file(home, tmp_path, monkeypatch, capsys):
    from mlplatform.cli import main

    root = team_root(tmp_path / "specs", {"fraud": {"score.yaml": named("score").replace("task: regression", "task: regresion")},
                                          "ads": {"ctr.yaml": named("ctr")}})
    monkeypatch.setenv("MLPLATFORM_SPECS", str(root))
    assert main(["validate"]) == 1
    out, err = capsys.readouterr()
    assert "ok  ctr" in out and "team ads: 1 model(s) loaded (ctr)" in out
    assert f"team fraud: 0 model(s) loaded; 1 broken spec file(s): {root / 'fraud' / 'score.yaml'}" in out
    assert f"{root / 'fraud' / 'score.yaml'}: task: found 'regresion'" in err


def test_team_a_broken_spec_leaves_team_b_scheduled_and_sensing(home, tmp_path, monkeypatch):
    """The real code location from a spec root whose team `fraud` has a broken file: team `ads`'s model keeps its
    assets (owned and tagged by its team), schedule and sensors, which tick against a real instance; the broken
    file is an asset in `spec_errors` whose check fails naming the file, key and fix; strict mode refuses to load."""
    from dagster import AssetKey, build_schedule_context, build_sensor_context, instance_for_test, materialize

    from mlplatform_tests.helpers import load_definitions

    broken_text = named("score", "gates: {metric: rmse, threshhold: 1}\n")
    root = team_root(tmp_path / "specs", {"fraud": {"score.yaml": broken_text},
                                          "ads": {"ctr.yaml": named("ctr", "automation: {retrain: on_drift}\n")}})
    monkeypatch.setenv("MLPLATFORM_SPECS", str(root))
    defs = load_definitions()

    model = defs.resolve_assets_def(AssetKey(["ctr", "model"])).specs_by_key[AssetKey(["ctr", "model"])]
    assert model.owners == ["team:ads"] and model.tags["team"] == "ads"
    assert defs.resolve_job_def("ctr_weekly").tags["team"] == "ads"
    for job in ("ctr_approve", "ctr_rollback", "ctr_canary_analysis"):  # the op jobs too: their runs filter by team
        assert defs.resolve_job_def(job).tags["team"] == "ads", job
    automation = [defs.resolve_schedule_def("ctr_weekly_schedule"),
                  *(defs.resolve_sensor_def(name) for name in ("ctr_retrain_on_drift", "ctr_rollback_on_decay",
                                                               "ctr_canary_sensor"))]
    for definition in automation:  # the UI's automation page filters schedules and sensors by owner and tag
        assert definition.tags == {"team": "ads"} and definition.owners == ["team:ads"], definition.name
    assert not [key for key in defs.resolve_asset_graph().get_all_asset_keys() if key.path[0] == "score"]
    with instance_for_test() as instance:
        schedule = defs.resolve_schedule_def("ctr_weekly_schedule")
        requests = schedule.evaluate_tick(build_schedule_context(instance=instance)).run_requests
        assert requests is not None
        for name in ("ctr_retrain_on_drift", "ctr_rollback_on_decay"):
            sensor = defs.resolve_sensor_def(name)
            tick = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
            assert tick.skip_message or tick.run_requests is not None  # ran, found nothing to do yet

        error_key = AssetKey(["spec_errors", "fraud", "score"])
        error_asset = defs.resolve_assets_def(error_key)
        spec = error_asset.specs_by_key[error_key]
        assert spec.group_name == "spec_errors" and spec.owners == ["team:fraud"]
        assert "gates.threshhold" in spec.description
        result = materialize([error_asset], instance=instance)
        [check] = result.get_asset_check_evaluations()
        assert not check.passed
        assert check.metadata["file"].value == str(root / "fraud" / "score.yaml")
        assert "gates.threshhold" in check.metadata["keys"].value
        assert "did you mean 'threshold'" in check.metadata["problems"].value

    monkeypatch.setenv("MLPLATFORM_STRICT_SPECS", "1")
    with pytest.raises(SpecError, match="score.yaml: gates.threshhold"):
        load_definitions()


def test_commands_load_the_valid_specs_and_refuse_only_the_broken_model(tmp_path):
    """What serve and the CLI load (load_usable_specs): team ads's model, a warning naming team fraud's broken
    file, key and fix; naming the broken model raises its problems; an unknown name and a missing root refuse."""
    from mlplatform.specs import load_usable_specs, skipped_specs_warning

    root = team_root(tmp_path / "specs", {"fraud": {"score.yaml": named("score", "gates: {metric: rmse, threshhold: 1}\n")},
                                          "ads": {"ctr.yaml": named("ctr")}})
    specs, skipped = load_usable_specs(root, check_data=False)
    assert [spec.name for spec in specs] == ["ctr"]
    warning = skipped_specs_warning(skipped)
    assert f"{root / 'fraud' / 'score.yaml'}: gates.threshhold:" in warning and "did you mean 'threshold'" in warning
    assert skipped_specs_warning([]) is None
    assert [s.name for s in load_usable_specs(root, ["ctr"])[0]] == ["ctr"]
    with pytest.raises(SpecError, match="score.yaml: gates.threshhold") as caught:
        load_usable_specs(root, ["ctr", "score"])
    assert all("score.yaml" in problem.file for problem in caught.value.problems)  # only the named model's
    with pytest.raises(ValueError, match="no model spec named 'nope'; specs: ctr"):
        load_usable_specs(root, ["nope"])
    with pytest.raises(SpecError, match="folder does not exist"):
        load_usable_specs(tmp_path / "missing")
