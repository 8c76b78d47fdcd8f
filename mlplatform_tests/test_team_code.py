"""A team's own preprocessing and model code (`estimator.factory`): allowed like estimator classes, trained, gated,
explained, served and reproduced like any version, and fingerprinted so a change to it shows in the audit."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from mlplatform import names
from mlplatform.cli import main
from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform.lib.training import CODE_FINGERPRINT_TAG, build_pipeline, code_tags, split_xy
from mlplatform.specs import SpecError, load_specs
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks

TEAM_MODULE = '''
"""The hotel team's model: its own feature engineering in front of a ridge regression."""
import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler


def with_x1_squared(frame):
    out = frame.copy()
    out["x1_squared"] = out["x1"] ** 2
    return out


def build(alpha=1.0):
    encode = ColumnTransformer([("numbers", StandardScaler(), ["x1", "x2", "x1_squared"]),
                                ("colors", OneHotEncoder(handle_unknown="ignore"), ["color"])])
    return Pipeline([("engineer", FunctionTransformer(with_x1_squared)), ("encode", encode),
                     ("ridge", Ridge(alpha=alpha))])


def classifier(**params):
    return LogisticRegression()


def not_a_model(**params):
    return "a string"
'''


def team_package(root: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The team's installed package (on sys.path, outside the spec folder), allowed by MLPLATFORM_ESTIMATOR_MODULES."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pipelines.py").write_text(textwrap.dedent(TEAM_MODULE))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("MLPLATFORM_ESTIMATOR_MODULES", name)
    return package / "pipelines.py"


def factory_spec(factory: str, extra: str = "") -> str:
    return TOY_SPEC + textwrap.dedent(f"""
        estimator:
          factory: {factory}
          params: {{alpha: 0.5}}
        gates:
          threshold: 1.0
        rollout:
          approval: auto
          auto_promote: immediate  # not about the canary stage (test_canary.py)
    """) + extra


def test_a_factory_is_validated_like_an_estimator_class(home, spec_dir, monkeypatch, tmp_path):
    team_package(tmp_path / "team", "team_validate", monkeypatch)
    cases = {
        "elsewhere.models.build": "estimator classes may only come from the modules",
        "team_validate.pipelines.buld": "has no function 'buld' (did you mean 'build'?)",
        "team_validate.pipelines.classifier": "returned a classifier for task regression",
        "team_validate.pipelines.not_a_model": "returned str, not an estimator or pipeline",
    }
    for factory, message in cases.items():
        folder = spec_dir({"toy.yaml": factory_spec(factory)}, {"toy.csv": toy_rows()})
        with pytest.raises(SpecError) as refused:
            load_specs(folder)
        assert any(p.key == "estimator.factory" and message in p.message for p in refused.value.problems), \
            refused.value.problems
    folder = spec_dir({"toy.yaml": factory_spec("team_validate.pipelines.build").replace(
        "  factory:", "  class: sklearn.linear_model.Ridge\n  factory:")}, {"toy.csv": toy_rows()})
    with pytest.raises(SpecError, match="give estimator.class or estimator.factory, not both"):
        load_specs(folder)
    folder = spec_dir({"toy.yaml": factory_spec("team_validate.pipelines.build").replace("alpha: 0.5", "alfa: 1")},
                      {"toy.csv": toy_rows()})
    with pytest.raises(SpecError, match="estimator.params: build\\(alfa=1\\) failed: TypeError"):
        load_specs(folder)


def test_the_factory_model_sees_the_raw_feature_columns_and_its_module_is_fingerprinted(home, spec_dir, monkeypatch,
                                                                                        tmp_path):
    module = team_package(tmp_path / "team", "team_pure", monkeypatch)
    folder = spec_dir({"toy.yaml": factory_spec("team_pure.pipelines.build")}, {"toy.csv": toy_rows()})
    (spec,) = load_specs(folder)
    rows = toy_rows()
    rows["not_a_feature"] = "secret"
    x, y = split_xy(rows, spec)
    pipeline = build_pipeline(spec).fit(x, y)
    assert list(pipeline.named_steps["preprocess"].transform(rows).columns) == ["x1", "x2", "color"]
    assert pipeline.named_steps["estimator"].named_steps["ridge"].alpha == 0.5
    tags = code_tags(spec)
    assert tags == {"code.factory": "team_pure.pipelines.build",
                    CODE_FINGERPRINT_TAG: hashlib.sha256(module.read_bytes()).hexdigest()}
    module.write_text(module.read_text().replace("alpha=1.0", "alpha=2.0"))
    assert code_tags(spec)[CODE_FINGERPRINT_TAG] != tags[CODE_FINGERPRINT_TAG]


@pytest.mark.slow
def test_a_factory_model_is_trained_gated_explained_served_audited_and_reproduced(home, spec_dir, instance,
                                                                                   monkeypatch, tmp_path, capsys):
    from mlplatform.serving.app import ServingConfig
    from mlplatform_tests.test_serving import LiveServer

    module = team_package(tmp_path / "team", "team_e2e", monkeypatch)
    folder = spec_dir({"toy.yaml": factory_spec("team_e2e.pipelines.build")}, {"toy.csv": toy_rows()})
    assert run_weeks(load_definitions(), "toy", instance, "2024-01-01", "2024-01-15",
                     ["raw", "features", "model", "evaluation"]).success
    tracker = Tracker.under(home / "mlflow")
    fingerprint = hashlib.sha256(module.read_bytes()).hexdigest()
    tags = tracker.version_tags("toy", "1")
    assert tags["gates"] == "passed" and tags[CODE_FINGERPRINT_TAG] == fingerprint
    assert tracker.alias_version("toy", CHAMPION) == "2"
    run_id = tracker.client.get_model_version("toy", "1").run_id
    importance = json.loads(Path(tracker.client.download_artifacts(run_id, names.IMPORTANCE_JSON, str(tmp_path)))
                            .read_text())
    assert importance["method"] == "permutation"  # the team's pipeline is no tree SHAP knows
    assert importance["features"][0]["feature"] == "x1"  # y = 2 x1 + x2: named as the spec's raw features

    assert main(["audit", "toy", "--json"]) == 0
    trained = [e for e in json.loads(capsys.readouterr().out) if e["event"] == "model_trained"]
    assert len(trained) == 2 and all(f"code team_e2e.pipelines.build fingerprint {fingerprint[:12]}" in e["summary"]
                                     and fingerprint in e["details"] for e in trained)

    assert main(["card", "toy", "--version", "1"]) == 0
    assert f"**Team code**: `team_e2e.pipelines.build`, fingerprint (SHA-256 of its module) `{fingerprint}`" in \
        capsys.readouterr().out

    rows = toy_rows()
    record = rows[["x1", "x2", "color"]].head(3)
    expected = tracker.load_version("toy", "2").predict(record)
    config = ServingConfig(home=home, specs=load_specs(folder), tracker=tracker, poll_seconds=0.05, flush_seconds=0.1)
    with LiveServer(config) as server:
        answer = server.predict("toy", record.to_dict("records"))
        assert answer.status_code == 200, answer.text
        assert [p["prediction"] for p in answer.json()["predictions"]] == pytest.approx(list(expected))
        explained = server.client.post("/v1/models/toy/explain", json={"records": record.head(1).to_dict("records")})
        assert explained.status_code == 200, explained.text
        features = {c["feature"] for c in explained.json()["explanations"][0]["top_contributions"]}
        assert features == {"x1", "x2", "color"}

    assert main(["reproduce", "toy", "1"]) == 0
    out = capsys.readouterr().out
    assert "metrics: identical" in out and f"team code team_e2e.pipelines.build: fingerprint {fingerprint[:12]}, " \
        "identical" in out
    module.write_text(module.read_text() + "\n# the team tuned a comment\n")  # the code changed, the model did not
    assert main(["reproduce", "toy", "1"]) == 0
    out = capsys.readouterr().out
    changed = hashlib.sha256(module.read_bytes()).hexdigest()
    assert (f"team code team_e2e.pipelines.build (fingerprint of its module): recorded {fingerprint[:12]}, "
            f"now {changed[:12]}") in out
