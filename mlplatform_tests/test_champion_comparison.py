"""What "better than the champion" means: gates.beat_champion.test (non_inferiority, superiority) and its margin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.lib import gates
from mlplatform.lib.metrics import paired_bootstrap
from mlplatform.lib.model_card import CardFacts, render_markdown
from mlplatform.specs import ModelSpec, SpecError, load_specs
from mlplatform_tests.conftest import TOY_SPEC, toy_rows

ROWS = 2000


@pytest.fixture(scope="module")
def regression_rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets, a good model's predictions (error sd 0.3) and a bad one's (error sd 1.0)."""
    rng = np.random.default_rng(7)
    y = rng.normal(size=ROWS)
    return y, y + rng.normal(size=ROWS) * 0.3, y + rng.normal(size=ROWS) * 1.0


def gate(comparison, test: str, margin: float = 0.0) -> gates.GateOutcome:
    return gates.champion_gate(comparison, 0.05, "4", "2024-01-15", test, margin)


def test_superiority_refuses_an_equal_challenger_that_non_inferiority_accepts(regression_rows):
    y, good, _ = regression_rows
    same = paired_bootstrap("rmse", y, good, good)
    accepted = gate(same, gates.NON_INFERIORITY)
    refused = gate(same, gates.SUPERIORITY)
    assert accepted.passed and "not significantly worse at alpha=0.05" in accepted.reason
    assert not refused.passed
    assert "not significantly better at alpha=0.05" in refused.reason and "(superiority test)" in refused.reason
    assert refused.facts["test"] == "superiority" and refused.facts["p_value"] == 1.0
    assert accepted.facts["test"] == "non_inferiority" and accepted.facts["margin"] == 0.0


def test_superiority_accepts_a_clearly_better_challenger_and_refuses_a_worse_one(regression_rows):
    y, good, bad = regression_rows
    better = gate(paired_bootstrap("rmse", y, good, bad), gates.SUPERIORITY)
    assert better.passed and "significantly better at alpha=0.05" in better.reason
    assert better.facts["p_value"] < 0.05 and better.facts["difference"] < 0
    assert not gate(paired_bootstrap("rmse", y, bad, good), gates.SUPERIORITY).passed


def test_superiority_follows_a_metric_where_higher_is_better():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, ROWS).astype(float)
    sharp = y + rng.normal(size=ROWS) * 0.5
    blurred = y + rng.normal(size=ROWS) * 2.0
    assert gate(paired_bootstrap("roc_auc", y, sharp, blurred), gates.SUPERIORITY).passed
    assert not gate(paired_bootstrap("roc_auc", y, blurred, sharp), gates.SUPERIORITY).passed
    assert not gate(paired_bootstrap("roc_auc", y, blurred, sharp), gates.NON_INFERIORITY).passed


def test_superiority_margin_asks_for_more_than_the_margin(regression_rows):
    y, good, bad = regression_rows
    better = paired_bootstrap("rmse", y, good, bad)  # about 0.7 lower rmse
    assert gate(better, gates.SUPERIORITY, margin=0.5).passed
    too_much = gate(better, gates.SUPERIORITY, margin=1.0)
    assert not too_much.passed and "not significantly better by more than the margin 1" in too_much.reason


def test_non_inferiority_margin_accepts_a_slightly_worse_challenger_that_margin_zero_refuses(regression_rows):
    y, good, _ = regression_rows
    slightly_worse = paired_bootstrap("rmse", y, good + 0.1, good)  # a bias of 0.1: rmse 0.30 -> about 0.32
    assert 0 < slightly_worse.difference < 0.05
    strict = gate(slightly_worse, gates.NON_INFERIORITY)
    assert not strict.passed and strict.reason.endswith("; significantly worse")
    assert strict.facts["p_value"] == slightly_worse.p_value  # margin 0 is today's test, unchanged
    tolerant = gate(slightly_worse, gates.NON_INFERIORITY, margin=0.05)
    assert tolerant.passed
    assert "(non-inferiority test, margin 0.05)" in tolerant.reason
    assert "not significantly worse by more than the margin 0.05" in tolerant.reason
    assert tolerant.facts["margin"] == 0.05
    assert not gate(slightly_worse, gates.NON_INFERIORITY, margin=0.001).passed  # a margin below the loss: refused


def test_default_spec_keeps_todays_test(spec_dir):
    [spec] = load_specs(spec_dir({"toy.yaml": TOY_SPEC}, {"toy.csv": toy_rows()}))
    chosen = spec.gates.beat_champion
    assert (chosen.test, chosen.margin, chosen.alpha) == ("non_inferiority", 0.0, 0.05)


def problems_for(spec_dir, beat_champion: str) -> list[str]:
    folder = spec_dir({"toy.yaml": TOY_SPEC + f"gates:\n  beat_champion: {beat_champion}\n"}, {"toy.csv": toy_rows()})
    with pytest.raises(SpecError) as caught:
        load_specs(folder)
    return [str(p) for p in caught.value.problems]


def test_a_malformed_test_or_margin_is_refused_with_the_key_named(spec_dir):
    [problem] = problems_for(spec_dir, "{test: superior}")
    assert "toy.yaml: gates.beat_champion.test: found 'superior'; allowed: non_inferiority, superiority" in problem
    assert "did you mean 'superiority'" in problem
    [problem] = problems_for(spec_dir, "{margin: -0.1}")
    assert "toy.yaml: gates.beat_champion.margin:" in problem
    with pytest.raises(ValueError, match="gates.beat_champion.test: found 'better'; allowed: non_inferiority"):
        gates.champion_gate(paired_bootstrap("rmse", np.zeros(3), np.ones(3), np.ones(3)), 0.05, "1", test="better")


def superiority_spec(margin: float) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "m", "task": "regression", "source": {"path": "x.csv"}, "target": "y",
        "features": {"numeric": ["a"]}, "partitions": {"start": "2024-01-01"},
        "gates": {"beat_champion": {"test": "superiority", "margin": margin}},
    })


def test_the_check_description_and_the_model_card_name_the_chosen_test():
    from mlplatform.defs.model_assets import build_model_assets

    spec = superiority_spec(0.2)
    [check] = [c for c in build_model_assets(spec).check_specs if c.name == gates.CHAMPION]
    assert check.description.startswith("Superiority test: deploy only a challenger significantly better than the "
                                         "champion of week W by more than 0.2")
    card = render_markdown(CardFacts(
        spec=spec, version="3", week="2024-01-08", mlflow_run_id="r", train_window="2024-01-01 .. 2024-01-08",
        train_rows=10, eval_rows=5, fingerprint="f", metrics={"rmse": (1.0, 0.5, 1.5)}, gates=[], importance=None,
        explain_note="", generated="now", backtest=pd.DataFrame()))
    assert "The champion comparison (`beat_champion`) is a superiority test: deploy only a challenger" in card
    assert "by more than 0.2" in card and "alpha=0.05" in card
