"""The model card of a version: what it is for, what it learned from, how well and how fairly it does, what drives
it, what it cannot do, and who let it into production. Markdown, and HTML rendered from the same text.

Two ways to gather the facts, one way to write them:

- :func:`facts_at_training`: from the week just recorded (in memory) and the warehouse, written with the MLflow
  version (``model_card.md`` / ``model_card.html``) as soon as its aliases are decided;
- :func:`facts_from_registry`: fresh, from the registry (params, metrics, gates.json, importance) and the warehouse
  (backtest, drift, the audit trail): what `mlplatform card` prints, with approvals made since training.

Every text that comes from a spec or a store is escaped before it enters the Markdown, so the HTML holds no markup
anyone but this module wrote.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from mlplatform import names
from mlplatform.lib import gates as gate_lib
from mlplatform.lib.explain import Importance
from mlplatform.specs import ModelSpec
from mlplatform.specs.tasks import is_lower_better

if TYPE_CHECKING:
    from mlplatform.lib.lifecycle import WeekResult
    from mlplatform.lib.tracking import Tracker

CARD_MD = names.MODEL_CARD_MD
CARD_HTML = names.MODEL_CARD_HTML
BACKTEST_WEEKS_SHOWN = 12
HISTORY_EVENTS = ("alias_change", "approval", "rollback", "canary_promoted")
TOP_FEATURES = 10
TASK_TEXT = {"regression": "regression (predicts a number)", "binary": "binary classification (a probability)",
             "multiclass": "multiclass classification (one of several classes)"}


@dataclass
class GateRow:
    name: str
    passed: bool
    reason: str
    per_group: str | None = None  # the fairness gate's per-group tables (markdown written by lib.fairness)


@dataclass
class CardFacts:
    spec: ModelSpec
    version: str
    week: str
    mlflow_run_id: str
    train_window: str
    train_rows: int
    eval_rows: int
    fingerprint: str
    metrics: dict[str, tuple[float, float, float]]  # name -> (value, 95% low, 95% high)
    gates: list[GateRow]
    importance: Importance | None
    explain_note: str
    generated: str  # when and from what
    code_version: str = ""
    team_code: dict[str, str] = field(default_factory=dict)  # estimator.factory and its module's fingerprint
    backtest: pd.DataFrame = field(default_factory=pd.DataFrame)  # week, model_version, value, ci_low, ci_high
    backtest_png: bytes | None = None
    drift: pd.DataFrame = field(default_factory=pd.DataFrame)  # week, drifted_share, check_passed, drifted
    history: pd.DataFrame = field(default_factory=pd.DataFrame)  # occurred_at, event, actor, version, summary
    aliases: list[str] = field(default_factory=list)  # aliases on this version when the card was written
    importance_png: bytes | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def facts_at_training(connection: duckdb.DuckDBPyConnection, spec: ModelSpec, result: WeekResult) -> CardFacts:
    """The card of the version just recorded: the week's own facts plus what the warehouse knows by now."""
    window = f"{result.train_window.start:%Y-%m-%d} .. {result.train_window.end:%Y-%m-%d} (end excluded)"
    facts = CardFacts(
        spec=spec, version=result.version, week=result.week, mlflow_run_id=result.run_id, train_window=window,
        train_rows=result.train_rows, eval_rows=result.eval_rows, fingerprint=result.fingerprint,
        metrics={k: (e.value, e.low, e.high) for k, e in result.metrics.items()},
        gates=[GateRow(g.name, g.passed, g.reason, g.facts.get("per_group")) for g in result.gates],
        importance=result.importance, explain_note=result.explain_note,
        generated=f"at training time ({_now()}), by the run that trained it",
        aliases=[c.alias for c in result.alias_changes], importance_png=result.importance_png, team_code=result.code,
    )
    _add_warehouse_facts(connection, facts, result.train_window.start)
    return facts


def facts_from_registry(connection: duckdb.DuckDBPyConnection | None, spec: ModelSpec, tracker: Tracker,
                        version: str) -> CardFacts:
    """A version's card from what the registry and the warehouse hold now (approvals since training included)."""
    model_version = tracker.client.get_model_version(spec.name, version)
    run = tracker.run(model_version.run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    gates_json = tracker.read_artifact(run.info.run_id, names.GATES_ARTIFACT)
    gate_report = json.loads(gates_json) if gates_json else {}
    importance_json = tracker.read_artifact(run.info.run_id, names.IMPORTANCE_JSON)
    importance, note = None, "no importance stored with this version (trained before explanations existed)"
    if importance_json:
        stored = json.loads(importance_json)
        importance, note = Importance.from_dict(stored), stored.get("note", "")
    registered = tracker.client.get_registered_model(spec.name)
    facts = CardFacts(
        spec=spec, version=str(version), week=params.get("eval_week", model_version.tags.get("week", "")),
        mlflow_run_id=run.info.run_id,
        train_window=(f"{params.get('train_start', '?')} .. {params.get('train_end', '?')} (end excluded)"
                      if "imported" not in params else
                      f"not trained here: imported from {tags.get('mlplatform.imported_file', '?')} (SHA-256 "
                      f"{tags.get('mlplatform.imported_sha256', '?')}) by {tags.get('mlplatform.imported_by', '?')}; "
                      f"drift reference {params.get('train_start', '?')} .. {params.get('train_end', '?')}"),
        train_rows=int(params.get("train_rows", 0)), eval_rows=int(params.get("eval_rows", 0)),
        fingerprint=tags.get("data.fingerprint", ""),
        metrics={k: (v, metrics.get(f"{k}_ci_low", float("nan")), metrics.get(f"{k}_ci_high", float("nan")))
                 for k, v in metrics.items() if not k.endswith(("_ci_low", "_ci_high"))},
        gates=[GateRow(name, bool(g.get("passed")), str(g.get("reason", "")), g.get("per_group"))
               for name, g in gate_report.items()],
        importance=importance, explain_note=note, generated=f"{_now()}, from the model registry and the audit trail",
        code_version=tags.get("git.commit", ""),
        team_code={k: v for k, v in tags.items() if k in (names.CODE_FACTORY_TAG, names.CODE_FINGERPRINT_TAG)},
        aliases=sorted(a for a, v in dict(registered.aliases).items() if str(v) == str(version)),
    )
    facts.importance_png = tracker.read_artifact(run.info.run_id, names.IMPORTANCE_PNG)
    if connection is not None:
        start = pd.Timestamp(params["train_start"]) if "train_start" in params else None
        _add_warehouse_facts(connection, facts, start, whole_backtest=True)
        if len(facts.backtest) > 1:  # a curve needs two weeks; a snapshot has one
            from mlplatform.lib.plots import backtest_plot

            table = facts.backtest
            facts.backtest_png = backtest_plot([f"{w:%Y-%m-%d}" for w in table["week"]], table["value"],
                                               table["ci_low"], table["ci_high"], spec.primary_metric,
                                               spec.gates.threshold, spec.name)
    return facts


def _table_exists(connection: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(connection.execute("select count(*) from information_schema.tables where table_schema = ? and "
                                   "table_name = ?", [schema, table]).fetchall()[0][0])


def _add_warehouse_facts(connection: duckdb.DuckDBPyConnection, facts: CardFacts, window_start: Any,
                         whole_backtest: bool = False) -> None:
    """The backtest (weeks up to this one, or all), the drift verdicts of the training window, the alias history."""
    model, week = facts.spec.name, pd.Timestamp(facts.week)
    if _table_exists(connection, model, names.EVALUATIONS_TABLE):
        until = "" if whole_backtest else "where week <= ?"
        facts.backtest = connection.execute(
            f'select week, model_version, value, ci_low, ci_high from "{model}"."{names.EVALUATIONS_TABLE}" '
            f"{until} order by week", [] if whole_backtest else [week]).fetchdf()
    if _table_exists(connection, model, names.DRIFT_TABLE) and window_start is not None:
        facts.drift = connection.execute(
            f"select week, max(drifted_share) as drifted_share, bool_and(check_passed) as check_passed, "
            f"string_agg(case when drifted and role = 'feature' then \"column\" end, ', ') as drifted "
            f'from "{model}"."{names.DRIFT_TABLE}" where week >= ? and week <= ? group by week order by week',
            [pd.Timestamp(window_start), week]).fetchdf()
    if _table_exists(connection, names.AUDIT_SCHEMA, names.AUDIT_EVENTS_TABLE):
        placeholders = ", ".join("?" for _ in HISTORY_EVENTS)
        facts.history = connection.execute(
            f"select occurred_at, event, actor, version, summary from {names.AUDIT_SCHEMA}.{names.AUDIT_EVENTS_TABLE} "
            f"where model = ? and event in ({placeholders}) and (version = ? or summary like ?) order by seq",
            [model, *HISTORY_EVENTS, facts.version, f"%v{facts.version} %"]).fetchdf()


# --- writing ---------------------------------------------------------------------------------------------------


def _t(value: Any) -> str:
    """Text from a spec or a store, safe inside Markdown and the HTML made from it."""
    return html.escape(str(value), quote=False).replace("|", "\\|").replace("\n", " ").replace("*", "\\*") \
        .replace("_", "\\_").replace("`", "\\`").replace("[", "\\[")


def _c(value: Any) -> str:
    """Text inside a code span: Markdown escapes it there itself; only a backtick could end the span."""
    return str(value).replace("`", "'").replace("\n", " ")


def _num(value: float) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.4g}"


def _image(png: bytes | None, title: str) -> str:
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})" if png else ""


def _positive_class(spec: ModelSpec) -> str | None:
    rules = spec.columns.get(spec.target)
    if spec.task != "binary" or rules is None or not rules.categories:
        return None
    return sorted(str(c) for c in rules.categories)[-1]  # the second of the sorted classes, as training orders them


def _fairness_reading(spec: ModelSpec) -> str:
    """How to read the per-group table, in the words of the model's own classes."""
    if spec.task == "regression":
        return "Per group: the mean prediction and the mean absolute error; the gap is relative to the overall mean."
    if spec.task == "multiclass":
        return "Per group: the share of the group predicted as each class."
    positive = _positive_class(spec)
    outcome = f"`{_c(positive)}`" if positive else "the positive class"
    return (f"Selection rate: the share of the group the model predicts {outcome} for (probability at least "
            f"{spec.decision_threshold:g}, the spec's evaluation.decision_threshold; "
            f"for a credit score, the approval rate). True positive rate: among those who really were {outcome}, "
            f"the share predicted so; false positive rate: among those who were not, the share predicted "
            f"{outcome} all the same. Parity difference: the largest gap in selection rate between groups.")


def automatic_limitations(facts: CardFacts) -> list[str]:
    """What the platform knows about every such model, said on every card."""
    spec = facts.spec
    notes = []
    if spec.source.timestamp is None:
        notes.append("The data have no event time (a snapshot): the model was evaluated on a held-out share of the "
                     "same snapshot, not on later data. How it does on future applicants is unknown until they "
                     "are scored and their outcomes known.")
    else:
        notes.append(f"Evaluated on one week ({facts.week}) after its {spec.partitions.training_window_weeks}-week "
                     "training window; the backtest shows how earlier versions did week by week.")
    if facts.eval_rows < 200:
        notes.append(f"Only {facts.eval_rows} evaluation rows: the intervals above are wide; read them, not only "
                     "the point values.")
    if spec.fairness is not None:
        notes.append("Fairness is checked per sensitive attribute on its own, not on intersections (e.g. young "
                     "women), and only on the attributes listed: " + ", ".join(spec.fairness.sensitive) + ".")
    else:
        notes.append("No fairness gate: the spec names no sensitive attribute.")
    notes.append("Importance says how much a feature moves the score on average, not that it causes the outcome; "
                 "features correlated with a sensitive attribute can carry it into the score.")
    return notes


def render_markdown(facts: CardFacts) -> str:
    spec = facts.spec
    lines: list[str] = []
    add = lines.append
    status = "passed every gate" if facts.passed else "FAILED a gate: never served"
    aliases = ", ".join(facts.aliases) if facts.aliases else "none"
    add(f"# Model card: {_t(spec.name)} v{_t(facts.version)}")
    add("")
    add(f"_Written {_t(facts.generated)}. Week {_t(facts.week)}; {status}; aliases: {_t(aliases)}._")
    add("")
    add("## Intended use")
    add("")
    add(_t(spec.description) if spec.description else "_The spec gives no description._")
    add("")
    add(f"- **Owner**: {_t(spec.owner or 'not named in the spec')}")
    task = TASK_TEXT[spec.task]
    if _positive_class(spec) is not None:
        task += f"; the score is the probability of `{_c(_positive_class(spec))}`"
    add(f"- **Predicts**: `{_c(spec.target)}`, {task}")
    add(f"- **Promotion**: {'a person approves every champion' if spec.rollout.approval == 'manual' else 'automatic when every gate passes'} "
        f"(rollout.approval: {spec.rollout.approval})")
    add("")
    add("## Model and data")
    add("")
    add(f"- **Estimator**: `{_c(spec.estimator_name)}` "
        + (f"with {_t(', '.join(f'{k}={v}' for k, v in spec.estimator.params.items()))}" if spec.estimator.params else ""))
    add(f"- **Inputs** ({len(spec.feature_columns)}): numbers {_t(', '.join(spec.features.numeric) or 'none')}; "
        f"categories {_t(', '.join(spec.features.categorical) or 'none')}"
        + (f"; free text {_t(', '.join(spec.features.text))} (TF-IDF)" if spec.features.text else ""))
    if spec.fairness is not None:
        add(f"- **Never inputs** (audited by the fairness gate): {_t(', '.join(spec.fairness.sensitive))}")
    add(f"- **Training window**: {_t(facts.train_window)}, {facts.train_rows} rows; evaluated on "
        f"{facts.eval_rows} rows of week {_t(facts.week)}")
    add(f"- **Data fingerprint** (SHA-256 of the exact training rows): `{_c(facts.fingerprint)}`")
    if names.CODE_FINGERPRINT_TAG in facts.team_code:
        add(f"- **Team code**: `{_c(facts.team_code.get(names.CODE_FACTORY_TAG, '?'))}`, fingerprint (SHA-256 of its "
            f"module) `{_c(facts.team_code[names.CODE_FINGERPRINT_TAG])}`")
    add(f"- **MLflow run**: `{_c(facts.mlflow_run_id)}`" + (f"; code `{_c(facts.code_version)}`" if facts.code_version else ""))
    add("")
    add("## Performance")
    add("")
    primary = spec.primary_metric
    bar = ""
    if spec.gates.threshold is not None:
        bar = f" The bar for `{primary}` is {'at most' if is_lower_better(primary) else 'at least'} {spec.gates.threshold:g}."
    add(f"On week {_t(facts.week)}'s evaluation rows, with 95% bootstrap intervals.{bar}")
    add("")
    add("| metric | value | 95% interval |")
    add("| --- | --- | --- |")
    for name, (value, low, high) in facts.metrics.items():
        add(f"| {'**' + name + '**' if name == primary else name} | {_num(value)} | {_num(low)} .. {_num(high)} |")
    add("")
    add("### Backtest")
    add("")
    if len(facts.backtest):
        shown = facts.backtest.tail(BACKTEST_WEEKS_SHOWN)
        add(f"`{primary}` of each week's version on the week after its training window "
            f"(last {len(shown)} of {len(facts.backtest)} weeks; the `{spec.name}/backtest` asset has them all).")
        add("")
        if facts.backtest_png:
            add(_image(facts.backtest_png, "backtest"))
            add("")
        add(f"| week | version | {primary} | 95% interval |")
        add("| --- | --- | --- | --- |")
        for row in shown.itertuples():
            mark = " (this version)" if str(row.model_version) == str(facts.version) else ""
            add(f"| {pd.Timestamp(row.week):%Y-%m-%d} | v{_t(row.model_version)}{mark} | {_num(row.value)} | "
                f"{_num(row.ci_low)} .. {_num(row.ci_high)} |")
    else:
        add("_No week evaluated in the warehouse yet._")
    add("")
    add("## Gates")
    add("")
    add("A version that fails any gate gets no alias and is never served.")
    chosen = spec.gates.beat_champion
    add(f"The champion comparison (`beat_champion`) is a "
        f"{_t(gate_lib.champion_test_description(chosen.test, chosen.margin, chosen.alpha))}.")
    add("")
    add("| gate | outcome | reason |")
    add("| --- | --- | --- |")
    for gate in facts.gates:
        add(f"| {_t(gate.name)} | {'PASS' if gate.passed else '**FAIL**'} | {_t(gate.reason)} |")
    for gate in facts.gates:
        if gate.per_group:
            add("")
            add(f"### Fairness per group ({'passed' if gate.passed else 'failed'})")
            add("")
            add(_fairness_reading(spec))
            add("")
            add(html.escape(gate.per_group, quote=False))  # markdown tables written by lib.fairness
    add("")
    add("## What drives the score")
    add("")
    if facts.importance is not None:
        importance = facts.importance
        add(f"{_t(facts.explain_note)}. Unit: {_t(importance.unit)}.")
        add("")
        add(importance.markdown(TOP_FEATURES).replace("_", "\\_"))
        if facts.importance_png:
            add("")
            add(_image(facts.importance_png, "feature importance"))
        add("")
        add("A single decision is explained by `POST /v1/models/" + spec.name + "/explain` (each feature's "
            "contribution to that applicant's score).")
    else:
        add(f"_{_t(facts.explain_note) or 'not explained'}_")
    add("")
    add("## Drift of the training window")
    add("")
    data_gate = next((g for g in facts.gates if g.name == "training_data_drift"), None)
    if data_gate is not None:
        add(f"- Training-data gate: {'PASS' if data_gate.passed else 'FAIL'}: {_t(data_gate.reason)}")
    if len(facts.drift):
        failed = facts.drift[~facts.drift["check_passed"].astype(bool)]
        add(f"- Weekly drift check over the window and the evaluated week: {len(facts.drift)} weeks checked, "
            f"{len(failed)} failed" + (": " + "; ".join(
                f"{pd.Timestamp(r.week):%Y-%m-%d} ({_t(r.drifted or 'shares of prediction/label')})"
                for r in failed.itertuples()) if len(failed) else ""))
    else:
        add("- No weekly drift check recorded for these weeks (the `drift` asset had not run for them).")
    add("")
    add("## Known limitations")
    add("")
    for note in spec.limitations:
        add(f"- {_t(note)}")
    for note in automatic_limitations(facts):
        add(f"- {_t(note)}")
    add("")
    add("## Approvals and alias history")
    add("")
    if len(facts.history):
        add("| when (UTC) | event | by | version | what |")
        add("| --- | --- | --- | --- | --- |")
        for row in facts.history.itertuples():
            add(f"| {pd.Timestamp(row.occurred_at):%Y-%m-%d %H:%M} | {_t(row.event)} | {_t(row.actor)} | "
                f"v{_t(row.version)} | {_t(row.summary)} |")
    else:
        add("_No alias has pointed at this version, and nobody approved it._")
    add("")
    return "\n".join(lines)


HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222;
line-height:1.45}table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f3f3f3}code{background:#f3f3f3;padding:0 .2rem;word-break:break-all}
img{max-width:100%}h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem}"""


def render_html(markdown_text: str, title: str) -> str:
    """The Markdown as a standalone HTML page (Python-Markdown with tables; the text was escaped when written)."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def card_files(facts: CardFacts) -> dict[str, str]:
    text = render_markdown(facts)
    return {CARD_MD: text, CARD_HTML: render_html(text, f"{facts.spec.name} v{facts.version}: model card")}


def store_card_at_training(connection: duckdb.DuckDBPyConnection, spec: ModelSpec, result: WeekResult,
                           tracker: Tracker) -> tuple[str | None, str]:
    """Write the version's card (Markdown and HTML) into its MLflow run: (the HTML's URI or None, a note).

    After the week is recorded, so the card can say which aliases it got; a card that cannot be written is
    reported, never a reason to fail the week (`mlplatform card` writes it fresh at any time).
    """
    try:
        tracker.log_files(result.run_id, card_files(facts_at_training(connection, spec, result)))
    except Exception as error:  # noqa: BLE001 - the card documents the week; it does not decide it
        return None, f"model card not written: {type(error).__name__}: {error}"
    uri = f"{result.artifact_uri.rstrip('/')}/{CARD_HTML}" if result.artifact_uri else CARD_HTML
    return uri, f"`mlplatform card {spec.name} --version {result.version}` prints it fresh (with later approvals)"
