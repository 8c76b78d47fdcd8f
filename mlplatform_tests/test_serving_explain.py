"""POST /v1/models/{name}/explain over real HTTP: contributions that add up, the same validation as predict."""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest

from mlplatform import names
from mlplatform.lib.explain import background_rows
from mlplatform.lib.tracking import CHAMPION, Tracker
from mlplatform.lib.training import build_pipeline, split_xy
from mlplatform.specs import load_specs
from mlplatform_tests.conftest import TOY_SPEC, toy_rows
from mlplatform_tests.test_serving import World, records, serve

TREE = "toy_tree"  # HistGradientBoosting: TreeSHAP, no background needed
LINEAR = "toy_linear"  # LogisticRegression: sampled Shapley against the stored background rows
BARE = "toy_bare"  # a Ridge registered without background rows (not trained by the platform)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("explain")
    home, specs_dir = root / "home", root / "specs"
    specs_dir.mkdir()
    rows = toy_rows(weeks=3, per_week=60)
    rows["big"] = np.where(rows["y"] > 10, "yes", "no")
    rows.to_csv(specs_dir / "toy.csv", index=False)
    base = textwrap.dedent(TOY_SPEC)
    specs = {
        TREE: base.replace("name: toy", f"name: {TREE}") + "estimator:\n  class: sklearn.ensemble."
        "HistGradientBoostingRegressor\n  params: {max_iter: 30}\n",
        LINEAR: base.replace("name: toy", f"name: {LINEAR}").replace("task: regression", "task: binary")
        .replace("target: y", "target: big") + "estimator:\n  class: sklearn.linear_model.LogisticRegression\n",
        BARE: base.replace("name: toy", f"name: {BARE}") + "estimator:\n  class: sklearn.linear_model.Ridge\n",
    }
    for name, text in specs.items():
        (specs_dir / f"{name}.yaml").write_text(text + "rollout: {canary_percent: 0}\n")
    saved = {k: os.environ.get(k) for k in ("MLPLATFORM_HOME", "MLPLATFORM_SPECS")}
    os.environ["MLPLATFORM_HOME"], os.environ["MLPLATFORM_SPECS"] = str(home), str(specs_dir)
    tracker = Tracker.under(home / "mlflow")
    world = World(home, specs_dir, rows, tracker)
    for spec in load_specs(specs_dir):
        x, y = split_xy(rows, spec)
        pipeline = build_pipeline(spec).fit(x, y)
        artifacts = {}
        if spec.name == LINEAR:
            buffer = io.BytesIO()
            background_rows(x).to_parquet(buffer, index=False)
            artifacts[names.BACKGROUND_PARQUET] = buffer.getvalue()
        tracker.log_trained_model(spec.name, f"{spec.name}-1", pipeline, x.head(5), {}, {}, {}, artifacts,
                                  {"gates": "passed"})
        tracker.set_alias(spec.name, CHAMPION, "1")
    yield world
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _explain(server, model: str, body, **params):
    return server.client.post(f"/v1/models/{model}/explain", json=body, params=params)


def test_tree_and_linear_explanations_add_up_to_the_served_prediction(world):
    rows = world.rows.head(5).copy()
    rows.loc[rows.index[1], "x2"] = None  # a null the model imputes: its value is echoed as null
    with serve(world, [TREE, LINEAR]) as server:
        sent = records(rows, ["id", "x1", "x2", "color"])
        response = _explain(server, TREE, {"records": sent}, top=2)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == "1" and len(body["explanations"]) == 5
        predicted = server.predict(TREE, sent).json()["predictions"]
        for answer, expected in zip(body["explanations"], predicted, strict=True):
            assert answer["prediction"] == pytest.approx(expected["prediction"], abs=1e-9)
            assert answer["explained_output"] == "predicted value" and len(answer["top_contributions"]) == 2
            total = answer["base_value"] + sum(c["contribution"] for c in answer["top_contributions"]) \
                + answer["other_features"]
            assert total == pytest.approx(answer["prediction"], abs=1e-6)
        assert body["explanations"][0]["top_contributions"][0]["feature"] == "x1"  # y = 2 x1 + x2 by construction
        assert {c["feature"]: c["value"] for c in body["explanations"][1]["top_contributions"]}.get("x2", None) is None

        linear = _explain(server, LINEAR, {"records": sent[:2]})
        assert linear.status_code == 200, linear.text
        first = linear.json()["explanations"][0]
        assert first["explained_output"] == "log-odds of 'yes'" and set(first["probabilities"]) == {"no", "yes"}
        p = first["probabilities"]["yes"]
        assert first["output_value"] == pytest.approx(np.log(p / (1 - p)), abs=1e-6)
        assert [c["feature"] for c in first["top_contributions"]][0] == "x1"


def test_explain_refuses_bad_input_with_reasons_like_predict(world):
    good = records(world.rows.head(1), ["x1", "x2", "color"])
    with serve(world, [TREE, BARE]) as server:
        assert _explain(server, "nope", {"records": good}).status_code == 404
        malformed = server.client.post(f"/v1/models/{TREE}/explain", content=b"{not json",
                                       headers={"content-type": "application/json"})
        assert malformed.status_code == 400 and malformed.json()["error"] == "malformed JSON"
        assert _explain(server, TREE, {"rows": good}).status_code == 422
        bad = _explain(server, TREE, {"records": [{"x1": "ten", "x2": 1.0, "color": "purple"}]})
        assert bad.status_code == 422
        assert {p["field"] for p in bad.json()["problems"]} == {"x1", "color"}
        assert _explain(server, TREE, {"records": good}, top=0).status_code == 422
        assert _explain(server, TREE, {"records": good}, top="all").status_code == 422
        assert _explain(server, TREE, {"records": good * 101}).status_code == 413
        bare = _explain(server, BARE, {"records": good})
        assert bare.status_code == 409 and "no background rows" in bare.json()["error"]
        metrics = server.client.get("/metrics").text
        assert 'route="explain",status="422"' in metrics


def test_explain_route_is_in_the_openapi_document(world):
    with serve(world, [TREE]) as server:
        paths = server.client.get("/openapi.json").json()["paths"]
        assert "post" in paths["/v1/models/{name}/explain"]


def test_fuzzed_explain_requests_never_get_a_500(world):
    import json

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from mlplatform_tests.test_serving import PAYLOAD

    with serve(world, [TREE, LINEAR]) as server:

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(model=st.sampled_from([TREE, LINEAR, "nope"]), top=st.sampled_from([None, "2", "0", "x"]),
               body=st.one_of(PAYLOAD.map(lambda p: json.dumps(p).encode()), st.binary(max_size=40)))
        def check(model: str, top: str | None, body: bytes) -> None:
            response = server.client.post(f"/v1/models/{model}/explain", content=body,
                                          params={"top": top} if top is not None else None,
                                          headers={"content-type": "application/json"})
            assert response.status_code in (200, 400, 404, 413, 422), (response.status_code, response.text, body)
            if response.status_code == 200:
                for answer in response.json()["explanations"]:
                    assert np.isfinite(answer["output_value"]) and answer["top_contributions"]

        check()
        assert 'status="500"' not in server.client.get("/metrics").text
