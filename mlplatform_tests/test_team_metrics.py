"""A team's own metric (`metrics:` in its spec) as the primary metric: click-through rate, clicks over impressions,
from outcomes that arrive as labels. It decides the gates, the champion comparison, the backtest, live performance,
canary and shadow analysis, with the direction the team declared."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey

from mlplatform.lib import gates as gate_lib
from mlplatform.lib import live, outcomes
from mlplatform.lib.metrics import MetricEstimate, paired_bootstrap
from mlplatform.lib.routing import CHAMPION_ROLE, SHADOW_ROLE
from mlplatform.specs import SpecError, load_specs
from mlplatform.specs.tasks import is_lower_better
from mlplatform_tests.conftest import toy_rows
from mlplatform_tests.helpers import load_definitions, run_weeks, warehouse_query
from mlplatform_tests.test_production_loop import _canary_rows, _log, _scores

TEAM_METRICS = '''
"""The recommender team's business metrics."""
import numpy as np


def click_through_rate(clicked, shown):
    """Clicks over impressions: of the items the model chose to show (shown == 1), the share that was clicked."""
    impressions = shown == 1
    return float(clicked[impressions].mean()) if impressions.any() else 0.0


def wasted_impressions(clicked, shown):
    """Impressions without a click per row: lower is better."""
    return float(np.mean((shown == 1) & (clicked == 0)))
'''

PACKAGE = "team_recommender"


@pytest.fixture(scope="module")
def team_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The team's installed package, written once per module (Python caches an imported module by name)."""
    root = tmp_path_factory.mktemp("team")
    (root / PACKAGE).mkdir()
    (root / PACKAGE / "__init__.py").write_text("")
    (root / PACKAGE / "metrics.py").write_text(textwrap.dedent(TEAM_METRICS))
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


def clicks(weeks: int = 3, per_week: int = 200, seed: int = 0) -> pd.DataFrame:
    """Impressions with the outcome as a label (clicked 1/0); the click depends on x1, x2 and the color."""
    rows = toy_rows(weeks, per_week, seed)
    rng = np.random.default_rng(seed + 1)
    logit = (rows["x1"] - 5) * 0.8 + rows["x2"] + np.where(rows["color"] == "red", 1.0, 0.0)
    rows["clicked"] = (rng.uniform(size=len(rows)) < 1 / (1 + np.exp(-logit))).astype(int)
    return rows.drop(columns=["y"])


CTR_SPEC = """
name: recommender
task: binary
source:
  path: clicks.csv
  timestamp: ts
  key: [id]
target: clicked
features:
  numeric: [x1, x2]
  categorical: [color]
columns:
  clicked: {categories: [0, 1]}
partitions:
  start: 2024-01-01
  end: 2024-01-22
  training_window_weeks: 1
estimator:
  class: sklearn.linear_model.LogisticRegression
metrics:
  ctr:
    function: team_recommender.metrics.click_through_rate
    greater_is_better: true
  wasted:
    function: team_recommender.metrics.wasted_impressions
    greater_is_better: false
gates:
  metric: ctr
  threshold: 0.6
rollout:
  approval: auto
  auto_promote: immediate  # champion at once: this test is not about the canary stage (test_canary.py)
"""


@pytest.fixture
def ctr_specs(team_package, spec_dir, monkeypatch):
    monkeypatch.setenv("MLPLATFORM_ESTIMATOR_MODULES", PACKAGE)

    def write(text: str = CTR_SPEC) -> Path:
        return spec_dir({"recommender.yaml": text}, {"clicks.csv": clicks()})

    return write


def test_a_team_metric_is_checked_named_in_problems_and_registered_with_its_direction(home, ctr_specs, monkeypatch):
    folder = ctr_specs(CTR_SPEC.replace("metric: ctr", "metric: ctrr"))
    with pytest.raises(SpecError, match="gates.metric: found 'ctrr'; allowed for task binary: .*ctr, wasted"):
        load_specs(folder)
    folder = ctr_specs(CTR_SPEC.replace("metrics.click_through_rate", "metrics.click_rate"))
    with pytest.raises(SpecError, match="metrics.ctr.function: .*no function 'click_rate'"):
        load_specs(folder)
    monkeypatch.delenv("MLPLATFORM_ESTIMATOR_MODULES")
    with pytest.raises(SpecError, match="metrics.ctr.function: found 'team_recommender.metrics.click_through_rate'; "
                                        "estimator classes may only come from the modules"):
        load_specs(ctr_specs())
    monkeypatch.setenv("MLPLATFORM_ESTIMATOR_MODULES", PACKAGE)
    with pytest.raises(SpecError, match="metrics.roc_auc: .*not a built-in metric"):
        load_specs(ctr_specs(CTR_SPEC.replace("  ctr:\n", "  roc_auc:\n").replace("metric: ctr", "metric: roc_auc")))

    (spec,) = load_specs(ctr_specs())
    assert spec.primary_metric == "ctr" and not is_lower_better("ctr") and is_lower_better("wasted")
    assert gate_lib.threshold_gate("ctr", 0.55, 0.6).reason == "ctr 0.55 misses the bar >= 0.6"
    assert gate_lib.threshold_gate("wasted", 0.1, 0.2).passed  # lower is better: at or below the bar passes


def test_click_through_rate_judges_live_performance_canary_shadow_and_the_champion_comparison(home, ctr_specs):
    load_specs(ctr_specs())  # registers the team's metrics for this process, as every entry point does
    y, score = _scores(2000, 3.0, seed=2)
    shown = score >= 0.5
    found = live.estimate("binary", "ctr", y, score)
    assert found.value == pytest.approx(y[shown].mean()) and found.low < found.value < found.high

    # a click-through rate that fell far below the version's own evaluation fails the degradation check
    degraded = live.judge_degradation("ctr", "3", MetricEstimate(0.45, 0.42, 0.48), 2000, 0.80, 0.10, min_rows=50)
    assert not degraded.passed and degraded.relative_drop == pytest.approx(0.4375)

    worse = live.judge_canary("binary", "ctr", _canary_rows(3.0, 0.3), "3", min_rows=50)
    assert not worse.passed and worse.difference.metric == "ctr" and "significantly worse" in worse.reason
    assert live.judge_canary("binary", "ctr", _canary_rows(3.0, 3.0), "3", min_rows=50).passed

    logged = _log([{"request_id": str(i), "role": role, "version": version, "score": s, "record_id": str(i)}
                   for i in range(40) for role, version, s in ((CHAMPION_ROLE, "1", 0.9 if i % 2 else 0.1),
                                                                (SHADOW_ROLE, "2", 0.9))])
    labels = pd.DataFrame({outcomes.JOIN_KEY: [f"r:{i}" for i in range(40)], outcomes.LABEL: [i % 2 for i in range(40)]})
    [shadow] = live.shadow_comparison("binary", "ctr", logged, labels)
    # the champion shows only the clicked half (ctr 1.0); the shadow shows everything (ctr 0.5)
    assert shadow.labelled.metric == "ctr" and (shadow.labelled.a, shadow.labelled.b) == (0.5, 1.0)

    challenger, champion = np.where(y == 1, 0.9, score), score  # shows every click the champion shows, and more
    comparison = paired_bootstrap("ctr", y, challenger, champion)
    assert comparison.challenger > comparison.champion and comparison.p_value > 0.5


@pytest.mark.slow
def test_click_through_rate_is_the_primary_metric_of_the_gates_champion_comparison_and_backtest(home, ctr_specs,
                                                                                                instance):
    ctr_specs()
    assert run_weeks(load_definitions(), "recommender", instance, "2024-01-01", "2024-01-15",
                     ["raw", "features", "model", "evaluation", "backtest"]).success
    evaluations = warehouse_query(home, "select * from recommender.evaluations order by week")
    assert list(evaluations["metric"]) == ["ctr", "ctr"]
    predictions = warehouse_query(home, "select * from recommender.predictions where week = '2024-01-15'")
    shown = predictions["prediction"] >= 0.5
    assert evaluations["value"].iloc[-1] == pytest.approx(predictions.loc[shown, "actual"].mean())
    events = warehouse_query(home, "select summary from audit.events where event = 'gate' order by seq")["summary"]
    assert any(s.startswith("absolute_threshold: ctr ") and "the bar >= 0.6" in s for s in events)
    assert any(s.startswith("beat_champion: ctr: challenger ") for s in events)  # week 3 against week 2's champion
    backtest = instance.fetch_materializations(AssetKey(["recommender", "backtest"]), limit=1).records[0]
    metadata = backtest.asset_materialization.metadata
    assert metadata["last_ctr"].value == pytest.approx(evaluations["value"].iloc[-1]) and metadata["weeks"].value == 2


def test_a_changed_team_metric_is_a_changed_gate_section_and_specs_without_one_keep_their_hash(home, ctr_specs):
    from mlplatform.lib.spec_hash import changed_gate_sections, normalized_spec, spec_tags

    (spec,) = load_specs(ctr_specs())
    flipped = spec.model_copy(update={"metrics": {"ctr": spec.metrics["ctr"].model_copy(
        update={"greater_is_better": False}), "wasted": spec.metrics["wasted"]}})
    assert changed_gate_sections(spec_tags(spec), spec_tags(flipped)) == ["metrics"]
    plain = spec.model_copy(update={"metrics": {}})
    assert "metrics" not in normalized_spec(plain) and "factory" not in normalized_spec(plain)["estimator"]


def test_two_models_may_not_give_one_metric_name_two_meanings(home, ctr_specs, spec_dir):
    load_specs(ctr_specs())
    other = CTR_SPEC.replace("name: recommender", "name: banner").replace(
        "    greater_is_better: true\n", "    greater_is_better: false\n", 1)
    folder = spec_dir({"recommender.yaml": CTR_SPEC, "banner.yaml": other}, {"clicks.csv": clicks()})
    with pytest.raises(SpecError, match="metrics: metric 'ctr' is already defined as team_recommender.metrics."
                                        "click_through_rate \\(greater_is_better: True"):
        load_specs(folder)
