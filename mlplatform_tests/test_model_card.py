"""Model cards and explanations on the German credit example: written with the version, fresh from the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mlplatform.lib.explain import Importance
from mlplatform.lib.model_card import CardFacts, GateRow, render_html, render_markdown
from mlplatform.specs import ModelSpec

pytestmark = pytest.mark.usefixtures("warehouse_backend")


def test_german_credit_card_is_stored_with_the_version_and_fresh_from_the_cli(home, bundled_specs, instance, capsys,
                                                                             tmp_path):
    from dagster import AssetKey, AssetRecordsFilter

    from mlplatform.cli import main
    from mlplatform.lib.tracking import Tracker
    from mlplatform.names import IMPORTANCE_JSON, IMPORTANCE_PNG, MODEL_CARD_HTML, MODEL_CARD_MD
    from mlplatform_tests.helpers import load_definitions, run_weeks

    assert run_weeks(load_definitions(), "german_credit", instance, "2024-01-01").success
    tracker = Tracker.under(home / "mlflow")
    run_id = tracker.client.get_model_version("german_credit", "1").run_id

    importance = json.loads(tracker.read_artifact(run_id, IMPORTANCE_JSON))
    assert importance["method"] == "tree_shap" and importance["rows"] == 100
    features = [f["feature"] for f in importance["features"]]
    assert sorted(features) == sorted(ModelSpec.model_validate_json(json.dumps({  # spec names, not one-hot columns
        "name": "x", "task": "binary", "source": {"path": "x"}, "target": "t", "partitions": {"start": "2024-01-01"},
        "features": {"numeric": features}})).feature_columns)
    assert "checking_account" in features and not any(f.startswith("checking_account_") for f in features)
    assert tracker.read_artifact(run_id, IMPORTANCE_PNG).startswith(b"\x89PNG")

    card = tracker.read_artifact(run_id, MODEL_CARD_MD).decode()
    for heading in ("## Intended use", "## Performance", "## Gates", "## What drives the score",
                    "## Drift of the training window", "## Known limitations", "## Approvals and alias history"):
        assert heading in card
    assert "team:credit-risk" in card and "probability that an applicant repays" in card
    assert "### Fairness per group (passed)" in card and "| female |" in card and "&lt;25" in card
    assert "snapshot" in card and "aliases: challenger" in card
    assert "<html" in tracker.read_artifact(run_id, MODEL_CARD_HTML).decode()

    evaluation = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(["german_credit", "evaluation"])), limit=1).records[0]
    metadata = evaluation.asset_materialization.metadata
    assert "| checking_account |" in metadata["feature_importance"].value
    assert "data:image/png;base64," in metadata["feature_importance"].value
    assert metadata["model_card"].value.endswith(MODEL_CARD_HTML)

    assert main(["promote", "german_credit", "--by", "carol", "--reason", "reviewed the card"]) == 0
    capsys.readouterr()
    assert main(["card", "german_credit"]) == 0  # default: the champion
    fresh = capsys.readouterr().out
    assert "# Model card: german\\_credit v1" in fresh and "aliases: challenger, champion" in fresh
    assert "| approval | carol | v1 |" in fresh and "reviewed the card" in fresh
    assert "| 2024-01-01 | v1 (this version) |" in fresh
    assert "Deutsche Mark" in fresh  # the spec's own limitations
    output = tmp_path / "card.html"
    assert main(["card", "german_credit", "--version", "1", "--html", "--output", str(output)]) == 0
    page = output.read_text()
    assert "<table>" in page and "<h2>Known limitations</h2>" in page and "carol" in page
    assert main(["card", "german_credit", "--version", "9"]) == 1
    assert "no version 9" in capsys.readouterr().err


def test_text_from_a_spec_cannot_inject_markup_into_the_html_card():
    spec = ModelSpec.model_validate({
        "name": "m", "task": "regression", "source": {"path": "x.csv"}, "target": "y",
        "description": "<script>alert(1)</script> *bold* [link](javascript:alert(1))",
        "owner": "<img src=x onerror=alert(1)>", "limitations": "Not for <b>anyone</b> under 18",
        "features": {"numeric": ["a"]}, "partitions": {"start": "2024-01-01"},
    })
    facts = CardFacts(
        spec=spec, version="3", week="2024-01-08", mlflow_run_id="r", train_window="2024-01-01 .. 2024-01-08",
        train_rows=10, eval_rows=5, fingerprint="f", metrics={"rmse": (1.0, 0.5, 1.5)},
        gates=[GateRow("absolute_threshold", False, "rmse <script>x</script> misses")],
        importance=Importance("permutation", "mean drop", 5, pd.DataFrame({
            "feature": ["a"], "importance": [1.0], "share": [1.0]})), explain_note="permutation", generated="now")
    facts.backtest = pd.DataFrame({"week": pd.to_datetime(["2024-01-01", "2024-01-08"]), "model_version": ["2", "3"],
                                   "value": [1.1, 1.0], "ci_low": [0.9, 0.8], "ci_high": [1.3, 1.2]})
    facts.backtest_png = b"\x89PNG fake"
    markdown_text = render_markdown(facts)
    assert "![backtest](data:image/png;base64," in markdown_text and "| 2024-01-08 | v3 (this version) |" in markdown_text
    assert spec.limitations == ["Not for <b>anyone</b> under 18"]
    assert "Not for &lt;b&gt;anyone&lt;/b&gt; under 18" in markdown_text and "**FAIL**" in markdown_text
    page = render_html(markdown_text, "card")
    assert "<script" not in page and "<img src=x" not in page and "<b>anyone" not in page
    assert 'href="javascript' not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
