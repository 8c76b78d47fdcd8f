"""The ``mlplatform`` command: run the lifecycle, serve, approve, audit, reproduce, import models, gate changes in CI.

Heavy imports (Dagster, dbt) happen inside the commands, so ``mlplatform --help``
and ``mlplatform validate`` answer quickly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlplatform.lib.settings import (
    DEFAULT_MLFLOW_UI_URL,
    Settings,
    SettingsError,
    configure_process,
    ensure_home,
    load_settings,
)

if TYPE_CHECKING:
    from mlplatform.specs import DbtColumns


def cmd_validate(args: argparse.Namespace) -> int:
    from mlplatform.defs.dbt_project import dbt_columns
    from mlplatform.specs import load_spec_set

    settings = load_settings()
    ensure_home(settings)
    loaded = load_spec_set(settings.spec_roots, dbt_columns(settings))  # strict: any problem exits 1
    for spec in loaded.specs:
        print(f"ok  {spec.name:<20} {spec.task:<11} {spec.spec_file}")
    teams = loaded.by_team()
    if len(teams) > 1 or any(spec.team_name for spec in loaded.specs) or loaded.broken:
        print("\n".join(report.summary() for report in teams.values()))
    if loaded.problems:
        print(f"{len(loaded.problems)} problem(s) in model specs:", file=sys.stderr)
        print("\n".join(f"  - {problem}" for problem in loaded.problems), file=sys.stderr)
        return 1
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mlplatform.defs.dbt_project import dbt_project_problem, platform_dbt_project, prepare_manifest
    from mlplatform.defs.instance import InstanceFileEdited, prepare_dagster_home, prepare_shared_dagster_home
    from mlplatform.lib.instance_config import InstanceConfigError

    settings = load_settings()
    if args.instance == "postgres":
        try:
            config, workspace = prepare_shared_dagster_home(settings, force=args.force)
        except (InstanceConfigError, InstanceFileEdited) as error:
            print(f"{error}\nnothing was written", file=sys.stderr)
            return 1
        print(f"wrote {config} (PostgreSQL storage, queued runs, one run per model at a time)")
        print(f"wrote {workspace} (the gRPC code server)")
        if not args.no_pools:
            code = _create_model_pools(settings)
            if code:
                return code
    else:
        prepare_dagster_home(settings)  # so `dagster ...` commands with DAGSTER_HOME set work before any demo
    missing = dbt_project_problem(settings)
    # Without a dbt project only specs with `staging` fail (and say why); everything else needs none.
    print(f"dbt manifest: none ({missing})" if missing else f"dbt manifest: {prepare_manifest(platform_dbt_project(settings))}")
    print(f"DAGSTER_HOME={settings.dagster_home}")
    return 0


def _create_model_pools(settings) -> int:
    """Connect to the shared instance and create each declared model's pool (see ``ensure_model_pools``)."""
    from dagster import DagsterInstance
    from sqlalchemy.exc import SQLAlchemyError

    from mlplatform.defs.instance import ensure_model_pools
    from mlplatform.specs import declared_names

    models = sorted(declared_names(settings.spec_roots))
    try:
        with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            created = ensure_model_pools(instance, models)
    except SQLAlchemyError as error:  # the database is down, the URL is wrong: the config is written, the pools are not
        print(f"could not reach the Dagster database to create the model pools ({type(error).__name__}: "
              f"{str(error).splitlines()[0][:300]}); run `mlplatform prepare --instance postgres` again once it is "
              "reachable, or pass --no-pools", file=sys.stderr)
        return 1
    print(f"pools (limit 1 each): {', '.join(created) or 'all ' + str(len(models)) + ' already there'}")
    return 0


def cmd_spec_reference(args: argparse.Namespace) -> int:
    from mlplatform.spec_reference import REFERENCE_PATH, render, write

    if args.check:
        current = REFERENCE_PATH.read_text() if REFERENCE_PATH.exists() else ""
        if current != render():
            print(f"{REFERENCE_PATH} is out of date: run `python3 dev.py spec-reference`", file=sys.stderr)
            return 1
        print(f"{REFERENCE_PATH} is up to date")
        return 0
    print(f"wrote {write()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run every model's lifecycle over its weeks on the bundled data, then print what happened."""
    from mlplatform.defs.instance import prepare_dagster_home
    from mlplatform.demo.plan import PlanError, held_back, load_plan
    from mlplatform.demo.runner import RunRequestError, run_models
    from mlplatform.demo.summary import summary_table
    from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
    from mlplatform.specs import SpecError, declared_names

    settings = load_settings()
    prepare_dagster_home(settings)
    try:
        plan = {} if args.no_serve else load_plan(settings.specs_dir, declared_names(settings.spec_roots))
        # the plan's production weeks stay out of the history; with --end or --weeks they follow the weeks run
        results = run_models(models=args.model or None, first=args.start, last=args.end, weeks=args.weeks,
                             hold_back={} if args.end or args.weeks else held_back(plan))
    except (SpecError, RunRequestError, PlanError) as error:
        print(f"{error}\nnothing was run", file=sys.stderr)
        return 1
    tracker = Tracker.for_settings(settings)
    champions = {r.model: tracker.alias_version(r.model, CHAMPION) for r in results}
    print()
    print(summary_table(results, settings.warehouse_path, champions))
    production_ok = True
    if not args.no_serve:
        from mlplatform.demo.production import run_production, summary_lines
        from mlplatform.demo.runner import specs_by_name

        specs = specs_by_name()
        try:
            summaries = run_production(settings, [specs[r.model] for r in results if r.model in specs], champions,
                                       {r.model: r.last_week for r in results}, plan)
        except RuntimeError as error:
            production_ok = False
            print(f"== production: the REST service failed: {error}")
        else:
            print("\n".join(summary_lines(summaries)))
            production_ok = all(s.answered == s.sent for s in summaries)
    print()
    print(f"State is in {settings.home}. Explore it:")
    print("  Dagster UI:  python3 dev.py ui         (http://127.0.0.1:3000)")
    print("  MLflow UI:   python3 dev.py mlflow-ui  (http://127.0.0.1:5000)")
    print("  REST API:    python3 dev.py serve      (http://127.0.0.1:8000/docs; prediction log under "
          f"{settings.home / 'prediction_log'})")
    for r in results:
        if champions.get(r.model) is None and tracker.alias_version(r.model, CHALLENGER) is not None:
            print(f"  {r.model} waits for a person (rollout.approval: manual): "
                  f"python3 dev.py promote {r.model} --by <your name> --reason <why>")
        elif champions.get(r.model) is None:
            print(f"  {r.model} has no champion: no version passed every gate")
    return 0 if all(r.success for r in results) and production_ok else 1


def mlflow_ui_command(settings: Settings, host: str, port: int) -> list[str] | str:
    """The `mlflow ui` command on the store the platform tracks to, or why none is needed (a tracking server)."""
    uri = settings.tracking_uri
    if uri.startswith(("http://", "https://", "databricks")):
        ui = settings.mlflow_ui_url if settings.mlflow_ui_url != DEFAULT_MLFLOW_UI_URL else uri
        return f"models are tracked on the MLflow server {uri} (MLPLATFORM_MLFLOW_TRACKING_URI): open its UI at {ui}"
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    """The MLflow UI on the store the platform tracks to (SQLite under MLPLATFORM_HOME by default)."""
    settings = load_settings()
    ensure_home(settings)
    command = mlflow_ui_command(settings, args.host, args.port)
    if isinstance(command, str):
        print(command)
        return 0
    print(f"MLflow UI on http://{args.host}:{args.port} (store {command[command.index('--backend-store-uri') + 1]}); "
          "Ctrl-C stops it")
    os.execv(sys.executable, command)
    return 0  # pragma: no cover


def _iso_date(text: str) -> str:
    """``--since``: a date, checked here; the audit compares it as text, so a typo silently matched nothing."""
    from datetime import date

    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"found {text!r}; give a date as YYYY-MM-DD") from None


def _person_moves_champion(args: argparse.Namespace, verb: str, decide) -> tuple[int, object]:
    """Promote's and rollback's move (:func:`mlplatform.lib.approvals.move_champion`, the UI jobs' too), with every
    refusal said on stderr. Returns (exit code, the change made or None)."""
    from mlflow.exceptions import MlflowException

    from mlplatform.lib import approvals, promotion
    from mlplatform.lib.tracking import Tracker
    from mlplatform.lib.warehouse import WarehouseBusy

    settings = load_settings()
    refused = f"not {verb}, nothing changed"
    try:
        change = approvals.move_champion(settings.home, settings.warehouse_path, Tracker.for_settings(settings),
                                         args.wait, decide)
    except approvals.StoresDamaged as damaged:
        print(f"{refused}: a store looks damaged or replaced:\n  - " + "\n  - ".join(damaged.problems), file=sys.stderr)
        return 1, None
    except WarehouseBusy as busy:
        print(f"{args.model}: {refused}: {busy}. A run is probably writing to it; try again when it ends, or give "
              "--wait SECONDS", file=sys.stderr)
        return 1, None
    except approvals.ApprovalDenied as denied:
        print(f"{args.model}: {refused}: {denied} (the refusal is recorded in the audit trail)", file=sys.stderr)
        return 1, None
    except promotion.PromotionRefused as error:
        print(f"{refused}: {error}", file=sys.stderr)
        return 1, None
    except MlflowException as error:
        print(f"{args.model}: {refused}: the registry refused the alias: {error}", file=sys.stderr)
        return 1, None
    return 0, change


def _dbt_model_columns() -> DbtColumns:
    """The dbt models' declared columns, for checking staged specs: a fresh manifest is read as it is (dagster-dbt
    is imported only to prepare a missing or stale one), and only when a spec asks (one without staging never
    looks)."""
    from mlplatform.defs.dbt_project import dbt_columns

    return dbt_columns()


def _spec_or_say(settings, model: str, before: str = "", after: str = ""):
    """The model's current spec; None when it does not load or no spec names the model, said on stderr as
    ``before`` + why + ``after`` (the command then changes nothing and exits 1)."""
    from mlplatform.specs import SpecError, load_spec_named

    try:
        return load_spec_named(settings.spec_roots, model, _dbt_model_columns())
    except (SpecError, ValueError) as error:
        print(f"{before}{error}{after}", file=sys.stderr)
        return None


def _current_spec_tags(model: str, verb: str) -> tuple[bool, dict[str, str] | None, object]:
    """The current spec's hashes (:func:`mlplatform.lib.spec_hash.spec_tags`), for refusing a version whose gates
    ran under an older spec, and who may approve (:class:`mlplatform.lib.approvals.ApprovalRule`, from its policy).
    (False, None, None) when the specs do not load (said on stderr: nothing may change then); (True, None, the
    policy file's default's rule) when no spec names the model any more (said on stderr: the check is skipped)."""
    from mlplatform.lib.approvals import ApprovalRule
    from mlplatform.lib.spec_hash import spec_tags
    from mlplatform.specs import SpecError, load_spec_named
    from mlplatform.specs.policies import PolicyFileError, load_policies, policies_path

    specs_dir = load_settings().specs_dir
    try:
        spec = load_spec_named(load_settings().spec_roots, model, _dbt_model_columns())
    except SpecError as error:
        print(f"{model}: not {verb}, nothing changed: its model spec does not load, so the spec this version's gates "
              f"ran under cannot be compared with the current one:\n{error}", file=sys.stderr)
        return False, None, None
    except ValueError as error:
        print(f"{model}: {error}; the version is not compared with a current spec", file=sys.stderr)
        try:
            policies, default = load_policies(policies_path(specs_dir))
        except PolicyFileError as broken:
            print(f"{model}: not {verb}, nothing changed: {broken}", file=sys.stderr)
            return False, None, None
        return True, None, ApprovalRule.of(policies.get(default) if default else None)
    return True, spec_tags(spec), ApprovalRule.of(spec.policy_rules)


def _approver_identity(args: argparse.Namespace, verb: str, done: str, rule):
    """Who decides: with the approvers' credentials file (``MLPLATFORM_APPROVER_TOKENS_FILE``), the person whose
    token ``MLPLATFORM_APPROVER_TOKEN`` (or a hidden prompt on a terminal) holds; else the name ``--by`` gives, with
    a warning when the policy limits approvers. Returns ``version -> (actor, approver groups)``, to be called in the
    decision so that a refusal is audited, or None (said on stderr) when nothing may change."""
    import getpass

    from mlplatform.lib.api_tokens import TokenFileError
    from mlplatform.lib.approver_identity import (
        APPROVER_TOKEN_ENV,
        approver_tokens_from_environment,
        authenticated_approver,
        unauthenticated_warning,
    )

    try:
        tokens = approver_tokens_from_environment()
    except TokenFileError as error:
        print(f"{args.model}: not {done}, nothing changed: the approvers' credentials file: {error}", file=sys.stderr)
        return None
    if tokens is None:
        if args.by is None:  # a blank name is refused by lib/promotion.py, in its words
            print(f"{args.model}: not {done}, nothing changed: --by NAME: give the name of the person who decides",
                  file=sys.stderr)
            return None
        warning = unauthenticated_warning(rule.allowed, rule.required_approvals, rule.policy) if rule else None
        if warning:
            print(warning, file=sys.stderr)
        return lambda version: (args.by, frozenset())
    token = os.environ.get(APPROVER_TOKEN_ENV, "").strip() or None
    if token is None and sys.stdin.isatty():
        token = getpass.getpass(f"approver token to {verb} {args.model} (not shown): ").strip() or None

    def authenticated(version):
        person = authenticated_approver(tokens, token, args.by, args.model, verb, version, args.reason)
        return person.name, person.groups

    return authenticated


def cmd_promote(args: argparse.Namespace) -> int:
    """A person approves a version: it becomes champion, and the audit table says who, when and why."""
    from mlplatform.lib import approvals

    loaded, current_spec, rule = _current_spec_tags(args.model, "promoted")
    if not loaded:
        return 1
    approver = _approver_identity(args, "promote", "promoted", rule)
    if approver is None:
        return 1
    _print_canary_evidence(args.model)
    live = _live_fairness_check(args.model)

    def decide(connection, tracker):
        actor, groups = approver(args.version)  # a missing or unknown token is refused here, so it is audited
        return approvals.approval_decision(
            connection, tracker, args.model, args.version, actor, args.reason, args.force, current_spec, rule,
            live_check=(lambda version: live(connection, version)) if live else None, actor_groups=groups)

    code, change = _person_moves_champion(args, "promoted", decide)
    if isinstance(change, approvals.PendingApproval):
        print(f"{args.model}: v{change.version}: approval {len(change.approvals)} of {change.required} recorded "
              f"({', '.join(change.approvals)}); v{change.version} becomes champion when another person approves it; "
              "nothing moved yet")
    elif code == 0 and change is None:
        print(f"{args.model}: v{args.version or 'the challenger'} is already the champion; nothing changed")
    elif code == 0:
        print(f"{args.model}: champion v{change.previous_version or '-'} -> v{change.version} "
              f"(approved by {change.actor})")
        if change.forced:
            print(f"warning: {args.model} v{change.version} is champion by force, overriding {change.forced}; the "
                  "service serves it and /v1/models shows it as forced (recorded in the audit and on the version)",
                  file=sys.stderr)
        evidence = _rollout_evidence(args.model, change.version)
        print(f"production evidence for v{change.version}:" if evidence else
              f"no production evidence for v{change.version} yet (canary or shadow weeks with outcomes)")
        for line in evidence:
            print(f"  {line}")
    return code


def _live_fairness_check(model: str):
    """Live fairness as promotion asks it (:func:`mlplatform.lib.live_fairness.promotion_refusal`); None when the
    spec and its policy do not require it, or no spec names the model (already said by ``_current_spec_tags``)."""
    from mlplatform.lib.live_fairness import promotion_refusal
    from mlplatform.specs import SpecError, load_spec_named

    settings = load_settings()
    try:
        spec = load_spec_named(settings.spec_roots, model, _dbt_model_columns())
    except (SpecError, ValueError):
        return None
    return promotion_refusal(spec, settings.home)


def _print_canary_evidence(model: str) -> None:
    """The live canary analysis a person promotes on (lib/canary.py): printed first, never in the way."""
    from mlplatform.lib.canary import run_analysis
    from mlplatform.lib.tracking import Tracker
    from mlplatform.specs import load_spec_named

    try:
        settings = load_settings()
        spec = load_spec_named(settings.spec_roots, model, _dbt_model_columns())
        _, analysis = run_analysis(settings.home, spec, Tracker.for_settings(settings),
                                   warehouse_path=settings.warehouse_path, wait_seconds=settings.warehouse_wait_seconds)
    except Exception as error:  # noqa: BLE001 - evidence is shown when it can be; the promotion's rules decide
        print(f"{model}: no live canary evidence ({type(error).__name__}: {error})", file=sys.stderr)
        return
    print(f"live canary evidence (last {spec.rollout.analysis.window_minutes} min):")
    print(analysis.text())


def cmd_canary(args: argparse.Namespace) -> int:
    """One canary analysis: canary against champion on the same traffic window; with --apply, its verdict is carried
    out as the hourly sensor would (stop, ramp step, or promotion under approval: auto), audited."""
    from mlflow.exceptions import MlflowException

    from mlplatform.lib import approvals, promotion
    from mlplatform.lib.canary import ANALYSIS_ACTOR, analyse_and_act
    from mlplatform.lib.tracking import Tracker
    from mlplatform.lib.warehouse import WarehouseBusy

    settings = load_settings()
    spec = _spec_or_say(settings, args.model, before=f"{args.model}: ")
    if spec is None:
        return 1
    actor = f"{ANALYSIS_ACTOR} (mlplatform canary --apply by {args.by})" if args.by else ANALYSIS_ACTOR
    try:
        run = analyse_and_act(settings.home, settings.warehouse_path, spec, Tracker.for_settings(settings), args.wait,
                              actor=actor, act=args.apply)
    except approvals.StoresDamaged as damaged:
        print("nothing changed: a store looks damaged or replaced:\n  - " + "\n  - ".join(damaged.problems),
              file=sys.stderr)
        return 1
    except (WarehouseBusy, promotion.PromotionRefused, MlflowException) as error:
        print(f"{args.model}: nothing changed: {error}", file=sys.stderr)
        return 1
    print(run.text() if args.apply else run.analysis.text())
    return 0


def _rollout_evidence(model: str, version: str) -> list[str]:
    """The canary and shadow weeks of a version, from the warehouse (read-only; empty before any production)."""
    from mlplatform.lib.live import rollout_evidence
    from mlplatform.lib.live_fairness import evidence_lines
    from mlplatform.lib.warehouse import connect_when_free, warehouse_exists

    settings = load_settings()
    if not warehouse_exists(settings.warehouse_path):
        return []
    with connect_when_free(settings.warehouse_path, settings.warehouse_wait_seconds, read_only=True) as connection:
        return rollout_evidence(connection, model, version) + evidence_lines(connection, model, version)


def cmd_rollback(args: argparse.Namespace) -> int:
    """A person puts an earlier champion back; the same rules and audit as every alias move (lib/promotion.py)."""
    from mlplatform.lib import approvals, promotion

    loaded, current_spec, rule = _current_spec_tags(args.model, "rolled back")
    if not loaded:
        return 1
    approver = _approver_identity(args, "roll back", "rolled back", rule)
    if approver is None:
        return 1

    def decide(connection, tracker):
        actor, groups = approver(args.to)  # a missing or unknown token is refused here, so it is audited
        approvals.checked_actor(rule, args.model, actor, "roll back", args.to, args.reason, groups)
        return promotion.rollback_change(connection, tracker, args.model, args.to, actor, args.reason,
                                         current_spec=current_spec)

    code, change = _person_moves_champion(args, "rolled back", decide)
    if code == 0:
        print(f"{args.model}: champion v{change.previous_version} -> v{change.version} (rolled back by {change.actor})")
    return code


def cmd_audit(args: argparse.Namespace) -> int:
    """Print a model's audit trail, or check its hash chain; opens the warehouse read-only and lets go at once."""
    import json

    from mlplatform.lib.audit import AUDIT_TABLE, models_with_trails, read_events
    from mlplatform.lib.audit_integrity import read_alias_rows
    from mlplatform.lib.warehouse import WarehouseBusy, WarehouseDamaged, connect_when_free, warehouse_exists

    settings = load_settings()
    log_code = _verify_prediction_log(args.model, settings) if args.verify_log else 0
    if args.verify_log and not args.verify:
        return log_code
    if not warehouse_exists(settings.warehouse_path):
        print(f"no warehouse at {settings.warehouse_path} yet: run `python3 dev.py demo` first", file=sys.stderr)
        return 1
    try:
        with connect_when_free(settings.warehouse_path, args.wait, read_only=True) as connection:
            if args.aliases and not args.verify:
                exists = connection.execute(
                    "select count(*) from information_schema.tables where table_schema = 'audit' "
                    "and table_name = 'alias_changes'").fetchone()[0]
                rows = connection.execute(
                    f"select * from {AUDIT_TABLE} where model = ? and changed_at >= ? order by changed_at",
                    [args.model, args.since or "1900-01-01"]).fetchdf() if exists else None
            else:
                rows = read_events(connection, args.model, None if args.verify else args.since)
            known = models_with_trails(connection) if args.verify else []
            alias_rows = read_alias_rows(connection, args.model) if args.verify else None
    except WarehouseBusy as busy:
        print(f"{busy}; try again when the run ends, or give --wait SECONDS", file=sys.stderr)
        return 1
    except WarehouseDamaged as damaged:
        print(f"{args.model}: {damaged}", file=sys.stderr)
        return 1
    if args.verify:
        return max(_verify_audit(args.model, settings, rows, alias_rows, known), log_code)
    if rows is None or rows.empty:
        print(f"no audit events for {args.model}")
        return 0
    if args.json:
        print(json.dumps(rows.astype(str).to_dict(orient="records"), indent=2))
    elif args.aliases:
        print(rows.to_string(index=False))
    else:
        shown = rows[["seq", "occurred_at", "event", "actor", "version", "week", "passed", "summary"]].copy()
        shown["summary"] = shown["summary"].str.slice(0, 100)
        print(shown.to_string(index=False))
    return 0


def _verify_audit(model: str, settings, rows, alias_rows, known: list[str]) -> int:
    """``audit --verify``: the keyed chain, its head against the registry tag and the checkpoint file, and
    audit.alias_changes against the chain (lib/audit_integrity.py). Nothing to verify is not "intact"."""
    from mlplatform.lib.audit_integrity import HEAD_TAG, read_checkpoint, verify_trail
    from mlplatform.lib.audit_key import AuditKeyError, configured_key
    from mlplatform.lib.tracking import Tracker

    try:
        key = configured_key()
    except AuditKeyError as error:
        print(f"{model}: not verified: {error}", file=sys.stderr)
        return 1
    try:  # the anchor outside the warehouse; an embedded store that was never created has none
        fresh = settings.embedded_mlflow and not (settings.mlflow_dir / "mlflow.db").exists()
        tags = None if fresh else Tracker.for_settings(settings).model_tags(model)
    except Exception as error:  # noqa: BLE001 - an unreachable registry: say so, do not call the trail intact
        print(f"{model}: not verified: the registry holding the audit head ({settings.tracking_uri}) cannot be read: "
              f"{error}", file=sys.stderr)
        return 1
    verdict = verify_trail(model, rows, alias_rows, (tags or {}).get(HEAD_TAG), read_checkpoint(settings.home, model),
                           tags is not None, known, key)
    if not verdict.intact:
        head = "" if verdict.no_trail else "the audit trail was tampered with:\n  - "
        print(f"{model}: {head}" + "\n  - ".join(verdict.problems), file=sys.stderr)
        return 1
    print(f"{model}: the audit trail is intact ({len(rows)} events, hash chain verified)")
    for note in verdict.notes:
        print(f"  - {note}")
    return 0


def _verify_prediction_log(model: str, settings) -> int:
    """``audit --verify-log``: every segment of the model's prediction log against its manifest (lib/log_manifest.py):
    a deleted, truncated, edited or unlisted segment is named; no log at all is not "intact" either."""
    from mlplatform.lib.audit_key import AuditKeyError, configured_key
    from mlplatform.lib.prediction_log import PredictionLogUnavailable, log_location_text, verify_prediction_log

    try:
        where = log_location_text(settings.home, model)
        verdict = verify_prediction_log(settings.home, model, configured_key())
    except (AuditKeyError, PredictionLogUnavailable, ValueError) as error:
        print(f"{model}: the prediction log was not verified: {error}", file=sys.stderr)
        return 1
    if verdict is None:
        print(f"{model}: no prediction log to verify at {where}: the service never logged this model there, or the "
              "whole log was deleted; either way nothing vouches for it", file=sys.stderr)
        return 1
    if not verdict.intact:
        print(f"{model}: the prediction log at {where} was tampered with:\n  - " + "\n  - ".join(verdict.problems),
              file=sys.stderr)
        return 1
    print(f"{model}: the prediction log at {where} is intact ({verdict.segments} segments, {verdict.rows} rows, "
          "manifest verified)")
    for note in verdict.notes:
        print(f"  - {note}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Retrain a registered version from what it recorded, in a scratch place, and compare (lib/reproduce.py)."""
    import json

    from mlplatform.lib.reproduce import ReproductionRefused, reproduce
    from mlplatform.lib.tracking import Tracker

    settings = load_settings()
    spec = _spec_or_say(settings, args.model, after="\nnothing was reproduced")
    if spec is None:
        return 1
    try:
        result = reproduce(Tracker.for_settings(settings), spec, args.version, settings.warehouse_path)
    except ReproductionRefused as refused:
        print(f"REFUSED: {refused}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        print("\n".join(result.lines()))
        print(f"{spec.name} v{args.version}: " + ("reproduced: identical metrics" if result.identical
                                                  else "NOT reproduced: the differences are listed above"))
    return 0 if result.identical else 1


def cmd_import(args: argparse.Namespace) -> int:
    """A model trained elsewhere becomes a gated, audited version of MODEL (lib/model_import.py)."""
    from pathlib import Path

    from mlplatform.lib import model_import
    from mlplatform.lib.audit import append_events
    from mlplatform.lib.promotion import PromotionRefused, refuse_control_characters
    from mlplatform.lib.tracking import Tracker
    from mlplatform.lib.training import split_xy
    from mlplatform.lib.warehouse import WarehouseBusy, connect_when_free
    from mlplatform.specs.team_metrics import register_spec_metrics

    refused = "nothing was imported"
    try:
        if not args.by.strip():
            raise PromotionRefused("--by: give the name of the person who imports the model")
        refuse_control_characters(by=args.by, reason=args.reason)
    except PromotionRefused as error:
        print(f"{error}\n{refused}", file=sys.stderr)
        return 1
    settings = load_settings()
    ensure_home(settings)
    spec = _spec_or_say(settings, args.model, after=f"\n{refused}")
    if spec is None:
        return 1
    register_spec_metrics(spec)
    file = Path(args.file)
    try:
        loaded = model_import.load_model_file(file, args.allow_pickle, args.trust or ())
        for warning in loaded.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        problem = model_import.input_problem(loaded.model, spec)
        if problem:
            raise model_import.ImportRefused(f"{file.name}: {problem}")
        week = model_import.newest_week(spec, _today())
        features = model_import.week_features(spec, week, settings.warehouse_path)
        pipeline = model_import.platform_pipeline(loaded.model, spec, split_xy(features, spec)[0])
        trained = model_import.evaluated_week(spec, pipeline, features, week)
    except (model_import.ImportRefused, model_import.NoEvaluationWeek) as error:
        print(f"REFUSED: {error}\n{refused}", file=sys.stderr)
        return 1
    tracker = Tracker.for_settings(settings)
    try:
        with connect_when_free(settings.warehouse_path, args.wait) as connection:
            result = model_import.register_import(spec, trained, loaded, tracker, file.name, args.by.strip(),
                                                  args.reason)
            append_events(connection, model_import.import_events(spec, result, file.name, args.by.strip(),
                                                                 args.reason))
    except WarehouseBusy as busy:
        print(f"{busy}; try again when the run ends, or give --wait SECONDS\n{refused}", file=sys.stderr)
        return 1
    print("\n".join(result.lines()))
    return 0 if result.passed else 1


def _today():
    """Today's date in UTC: which weeks have ended."""
    from datetime import UTC, datetime

    return datetime.now(UTC).date()


def cmd_check(args: argparse.Namespace) -> int:
    """CI's gate: validate the specs, then train each selected model in memory and run every gate against its
    champion (lib/ci_check.py). Exit 0 when every gate passed; 1 with the failing gates named; nothing registered."""
    from mlplatform.defs.dbt_project import dbt_columns
    from mlplatform.lib.ci_check import check_model, report
    from mlplatform.lib.tracking import Tracker
    from mlplatform.specs import SpecError, load_specs
    from mlplatform.specs.loader import UnknownModels
    from mlplatform.specs.team_metrics import register_spec_metrics

    settings = load_settings()
    ensure_home(settings)
    try:  # every spec (CI's gate, as validate); a team's check of its own models (--model) skips broken neighbours
        specs = (_usable_specs(settings, args.model, dbt_columns(settings), True)
                 if args.model and not settings.strict_specs else load_specs(settings.spec_roots, dbt_columns(settings)))
    except SpecError as error:
        print(f"FAIL  specs: {len(error.problems)} problem(s) in model specs:", file=sys.stderr)
        print("\n".join(f"  - {problem}" for problem in error.problems), file=sys.stderr)
        return 1
    except UnknownModels as error:  # a --model no spec declares
        print(f"no model named {', '.join(error.unknown)}; the specs define {', '.join(error.known) or 'none'}",
              file=sys.stderr)
        return 1
    by_name = {spec.name: spec for spec in specs}
    unknown = sorted(set(args.model or []) - set(by_name))
    if unknown:
        print(f"no model named {', '.join(unknown)}; the specs define {', '.join(sorted(by_name)) or 'none'}",
              file=sys.stderr)
        return 1
    print(f"specs: {len(specs)} valid")
    tracker = Tracker.for_settings(settings)
    checks = []
    for name in args.model or sorted(by_name):
        register_spec_metrics(by_name[name])
        checks.append(check_model(by_name[name], tracker, settings.warehouse_path, _today()))
    lines = report(checks)
    print("\n".join(lines))
    return 0 if all(c.passed for c in checks) else 1


def cmd_run(args: argparse.Namespace) -> int:
    """Deploy on merge: run each model's retrain job (the week's data, then model, evaluation, backtest) for its newest
    complete week on the configured stores; the gates and the spec's approval decide the aliases, as every week."""
    from dagster import DagsterInstance

    from mlplatform import names
    from mlplatform.defs.instance import fail_dead_runs, prepare_dagster_home
    from mlplatform.demo.runner import QUIET_RUN_CONFIG, specs_by_name
    from mlplatform.lib.model_import import NoEvaluationWeek, complete_weeks, newest_week
    from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
    from mlplatform.specs import SpecError

    settings = load_settings()
    prepare_dagster_home(settings)
    try:
        specs = specs_by_name()
    except SpecError as error:
        print(f"{error}\nnothing was run", file=sys.stderr)
        return 1
    unknown = sorted(set(args.model or []) - set(specs))
    if unknown:
        print(f"no model named {', '.join(unknown)}; the specs define {', '.join(sorted(specs)) or 'none'}\n"
              "nothing was run", file=sys.stderr)
        return 1
    from mlplatform.definitions import build_definitions

    defs = build_definitions()
    tracker = Tracker.for_settings(settings)
    ok = True
    with DagsterInstance.get() as instance:
        fail_dead_runs(instance)
        for model in args.model or sorted(specs):
            try:
                week = args.week or newest_week(specs[model], _today())
                if week not in complete_weeks(specs[model], _today()):
                    raise NoEvaluationWeek(f"--week {week}: not a complete week of {model} (a Monday from "
                                           f"{specs[model].partitions.start}, ended by today)")
            except NoEvaluationWeek as error:
                print(f"FAIL  {model}: {error}", file=sys.stderr)
                ok = False
                continue
            job = defs.resolve_job_def(names.retrain_job(model))
            result = job.execute_in_process(instance=instance, partition_key=week, raise_on_error=False,
                                            run_config=QUIET_RUN_CONFIG)
            ok = ok and result.success
            print(f"{'ok  ' if result.success else 'FAIL'}  {model}: {job.name} for week {week} (Dagster run "
                  f"{result.run_id[:8]}); champion v{tracker.alias_version(model, CHAMPION) or '-'}, challenger "
                  f"v{tracker.alias_version(model, CHALLENGER) or '-'}")
    return 0 if ok else 1


def cmd_card(args: argparse.Namespace) -> int:
    """A version's model card, fresh from the registry and the audit trail: printed, or written to a file."""
    from mlflow.exceptions import MlflowException

    from mlplatform.lib.model_card import card_files, facts_from_registry
    from mlplatform.lib.outputs import OutputRefused, checked_output_path, write_output_text
    from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
    from mlplatform.lib.warehouse import WarehouseBusy, WarehouseDamaged, connect_when_free, warehouse_exists
    from mlplatform.specs import SpecError

    settings = load_settings()
    ensure_home(settings)
    try:
        if args.output:  # refused before the work, not after it
            checked_output_path(args.output, force=args.force)
    except OutputRefused as refused:
        print(f"{refused}\nno card written", file=sys.stderr)
        return 1
    try:
        spec = _served_specs(settings, [args.model])[0]
    except (SpecError, ValueError) as error:
        print(f"{error}\nno card written", file=sys.stderr)
        return 1
    tracker = Tracker.for_settings(settings)
    version = args.version or tracker.alias_version(spec.name, CHAMPION) or tracker.alias_version(spec.name, CHALLENGER)
    try:
        if version is None:
            found = tracker.client.search_model_versions(f"name = '{spec.name}'", max_results=1,
                                                         order_by=["version_number DESC"])
            version = str(found[0].version) if found else None
        if version is None:
            print(f"{spec.name}: no registered version yet: run `python3 dev.py demo` first", file=sys.stderr)
            return 1
        connection = (connect_when_free(settings.warehouse_path, args.wait, read_only=True)
                      if warehouse_exists(settings.warehouse_path) else None)
        try:
            facts = facts_from_registry(connection, spec, tracker, str(version))
        finally:
            if connection is not None:
                connection.close()
    except WarehouseBusy as busy:
        print(f"{busy}; try again when the run ends, or give --wait SECONDS", file=sys.stderr)
        return 1
    except WarehouseDamaged as damaged:
        print(f"{damaged}\nno card written", file=sys.stderr)
        return 1
    except MlflowException as error:
        print(f"{spec.name}: no version {version} in the registry ({error.message.splitlines()[0]})", file=sys.stderr)
        return 1
    files = card_files(facts)
    text = files["model_card.html" if args.html else "model_card.md"]
    if args.output:
        try:
            written = write_output_text(args.output, text, force=args.force)
        except OutputRefused as refused:
            print(f"{refused}\nno card written", file=sys.stderr)
            return 1
        print(f"{spec.name} v{facts.version}: model card written to {written}")
    else:
        print(text)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent copy of the warehouse, the MLflow store and the Dagster instance (restore: docs/operations.md)."""
    from mlplatform.lib.outputs import OutputRefused, checked_output_path
    from mlplatform.lib.stores import StoresDamaged, backup_stores, describe
    from mlplatform.lib.warehouse import WarehouseBusy, WarehouseDamaged

    settings = load_settings()
    ensure_home(settings)
    try:
        target = checked_output_path(args.to, folder=True) if args.to else None
        report = backup_stores(settings.home, target, settings.mlflow_tracking_uri or None, args.wait,
                               settings.artifact_root)
    except (FileExistsError, OutputRefused, WarehouseBusy, WarehouseDamaged) as error:
        print(f"no backup made: {error}", file=sys.stderr)
        return 1
    except StoresDamaged as damaged:  # a damaged MLflow or Dagster SQLite file: the copy stops there
        print(f"no complete backup made: {damaged}", file=sys.stderr)
        return 1
    except OSError as error:  # e.g. a folder under /proc, a full disk: the copy stops where it failed
        print(f"no complete backup made: cannot write {error.filename or args.to} ({error.strerror})",
              file=sys.stderr)
        return 1
    print("\n".join(describe(report)))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """``dagster dev`` on this code location with the instance under MLPLATFORM_HOME."""
    settings = load_settings()
    from dagster import DagsterInstance

    from mlplatform.defs.instance import fail_dead_runs, prepare_dagster_home

    prepare_dagster_home(settings)

    with DagsterInstance.get() as instance:  # a run killed earlier must not hold the queue (max_concurrent_runs: 1)
        fail_dead_runs(instance)
    command = [sys.executable, "-m", "dagster", "dev", "-m", "mlplatform.definitions",
               "--host", args.host, "--port", str(args.port)]
    # `dagster dev` still works and is what workspace.yaml users run; its "use dg dev" notice is not for our users.
    os.environ["PYTHONWARNINGS"] = "ignore:Function `dev_command` is superseded"
    print(f"Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME={settings.dagster_home}); Ctrl-C stops it")
    os.execv(sys.executable, command)
    return 0  # pragma: no cover - execv does not return


def _served_specs(settings: Settings, names: Sequence[str] | None, check_data: bool = True) -> list:
    """The specs of the models to serve, replay or describe, loaded as `validate` loads them (an existing dbt
    manifest is read as it is: serving runs no dbt). ``check_data=False`` (serve): the schema only, no data file
    opened, since a serving replica has no training data on its disk."""
    from mlplatform.serving.server import select_specs
    from mlplatform.specs import load_specs

    columns = _dbt_model_columns() if check_data else None
    if settings.strict_specs:  # MLPLATFORM_STRICT_SPECS=1: any broken spec refuses, as in the code location
        return select_specs(load_specs(settings.spec_roots, columns, check_data=check_data), names)
    return _usable_specs(settings, names, columns, check_data)


def _usable_specs(settings: Settings, names: Sequence[str] | None, columns, check_data: bool) -> list:
    """The valid specs (named, or all), with a warning on stderr naming each broken spec file left out: one team's
    broken spec does not stop the others' models; a command naming the broken model itself gets its problems."""
    from mlplatform.specs import load_usable_specs, skipped_specs_warning

    specs, skipped = load_usable_specs(settings.spec_roots, names, columns, check_data=check_data)
    warning = skipped_specs_warning(skipped)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return specs


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve every spec'd model's champion over HTTP (canary, shadow, prediction log, hot swap)."""
    from mlplatform.lib.tracking import Tracker
    from mlplatform.serving.app import ServingConfig
    from mlplatform.serving.server import ServerOptions, serve
    from mlplatform.specs import SpecError

    if not args.body_timeout > 0:
        print(f"--body-timeout must be a number of seconds above 0; got {args.body_timeout}\nnothing is served",
              file=sys.stderr)
        return 1
    if not args.drain_seconds >= 0:
        print(f"--drain-seconds must be a number of seconds, 0 or more; got {args.drain_seconds}\nnothing is served",
              file=sys.stderr)
        return 1
    from mlplatform.lib.api_tokens import exposure_warning, tokens_from_environment
    from mlplatform.lib.object_store import configured_location, replica_id
    from mlplatform.lib.prediction_log import log_root, spool_root

    settings = load_settings()
    ensure_home(settings)
    try:
        specs = _served_specs(settings, args.model, check_data=False)  # data checks: `validate`, the code location
        location = configured_location()
        tokens = tokens_from_environment()  # a TokenFileError is a ValueError naming the file and key
    except (SpecError, ValueError) as error:
        print(f"{error}\nnothing is served", file=sys.stderr)
        return 1
    exposed = exposure_warning(args.host, tokens)
    if exposed:  # the service logs it too, once its logging is set up (serving.server.serve)
        print(exposed, file=sys.stderr, flush=True)
    config = ServingConfig(home=settings.home, specs=specs, tracker=Tracker.for_settings(settings),
                           poll_seconds=args.poll_seconds, flush_seconds=args.flush_seconds,
                           max_batch=args.max_batch, log_predictions=not args.no_log,
                           log_uri=location.uri if location else None, body_timeout_seconds=args.body_timeout,
                           api_tokens=tokens)
    where = ("off" if args.no_log else f"{location.uri} as replica {replica_id()}, spooled in "
             f"{spool_root(settings.home)}" if location else str(log_root(settings.home)))
    print(f"serving {', '.join(s.name for s in specs)} on http://{args.host}:{args.port} (API docs at /docs; "
          f"prediction log {where}); Ctrl-C stops it", flush=True)
    serve(config, ServerOptions(host=args.host, port=args.port, log_level=args.log_level,
                                drain_seconds=args.drain_seconds))
    return 0


def cmd_token_digest(args: argparse.Namespace) -> int:
    """The digest the tokens file stores for a token read from stdin (never an argument: shell history keeps those)."""
    from mlplatform.lib.api_tokens import MIN_PLAIN_TOKEN_CHARS, token_digest

    token = sys.stdin.readline().strip()
    if len(token) < MIN_PLAIN_TOKEN_CHARS:
        print(f"give a token of at least {MIN_PLAIN_TOKEN_CHARS} characters on stdin (e.g. "
              "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)", file=sys.stderr)
        return 1
    print(token_digest(token))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Send a model's feature rows for some weeks to a running service, as production traffic."""
    from datetime import date

    from mlplatform.serving.replay import feature_rows, records_of, replay_window, send
    from mlplatform.specs import SpecError

    settings = load_settings()
    ensure_home(settings)
    try:
        spec = _served_specs(settings, [args.model])[0]
        start = date.fromisoformat(args.start)
    except (SpecError, ValueError) as error:
        print(f"{error}\nnothing was sent", file=sys.stderr)
        return 1
    window = replay_window(start, args.weeks)
    try:
        frame = feature_rows(spec, window, settings.warehouse_path)
    except (FileNotFoundError, OSError) as error:
        print(f"{error}\nnothing was sent", file=sys.stderr)
        return 1
    result = send(records_of(frame, spec), args.url, spec.name, batch=args.batch)
    for line in result.errors[:10]:
        print(f"  error: {line}", file=sys.stderr)
    print(f"{spec.name}: {result.rows} rows from {window.start:%Y-%m-%d} to {window.end:%Y-%m-%d} (exclusive); "
          f"sent {result.sent}, answered {result.answered}, failed requests {result.failed_requests}")
    return 0 if result.answered == result.rows else 1


def cmd_alerts(args: argparse.Namespace) -> int:
    """``alerts deliver``: one delivery pass (what the alerts_delivery sensor does each tick, without the Dagster
    instance's failed runs); ``alerts test``: a test alert to one destination, or to each (docs/alerts.md)."""
    from mlplatform.lib import alerts
    from mlplatform.lib.warehouse import WarehouseBusy, connect_when_free
    from mlplatform.specs import SpecError
    from mlplatform.specs.policies import PolicyFileError

    settings = load_settings()
    ensure_home(settings)
    try:  # every spec root's models and policy file; a broken spec is left out with a warning
        setup = alerts.alert_setup(_served_specs(settings, None, check_data=False), settings.spec_roots)
    except (SpecError, PolicyFileError) as error:
        print(f"{error}\nnothing was sent", file=sys.stderr)
        return 1
    config = setup.config
    if args.action == "test":
        chosen = [args.destination] if args.destination else sorted(config.destinations)
        unknown = [d for d in chosen if d not in config.destinations]
        if not chosen or unknown:
            print(f"no destination {', '.join(unknown) or ''} in {setup.file or 'the policy file (none found)'}; "
                  f"defined: {', '.join(sorted(config.destinations)) or 'none'} (docs/alerts.md)", file=sys.stderr)
            return 1
        failed = 0
        for name in chosen:
            try:
                alerts.send(alerts.sample_alert(name, alerts.ui_url(config), alerts.utc_now()), config.destinations[name])
                print(f"sent a test alert to {name}")
            except alerts.DeliveryError as error:
                print(f"{name}: not delivered: {error}", file=sys.stderr)
                failed += 1
        return 1 if failed else 0
    if not settings.warehouse_path.exists():
        print(f"no warehouse at {settings.warehouse_path} yet: nothing ran, nothing to deliver")
        return 0
    try:
        from mlplatform.lib.audit_integrity import settings_anchor_reader

        report = alerts.deliver(lambda wait: connect_when_free(settings.warehouse_path, wait), setup,
                                anchors_of=settings_anchor_reader(settings),
                                read_wait=args.wait, record_wait=max(args.wait, 20.0))
    except WarehouseBusy as busy:
        print(f"{busy}; nothing was sent: try again when the run ends, or give --wait SECONDS", file=sys.stderr)
        return 1
    for outcome in report.outcomes:
        print(outcome.line(), file=sys.stdout if outcome.delivered else sys.stderr)
    print(report.text())
    return 1 if report.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlplatform", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the lifecycle of every model on its data and print a summary")
    demo.add_argument("--model", action="append", help="only this model (repeatable); default: all specs")
    demo.add_argument("--start", help="first week (Monday, YYYY-MM-DD); default: the spec's first week")
    demo.add_argument("--end", help="last week (Monday, YYYY-MM-DD); default: the spec's last week")
    demo.add_argument("--weeks", type=int, help="only N weeks, from --start (default: the spec's first week)")
    demo.add_argument("--no-serve", action="store_true", help="skip production: run every week as history, serve "
                      "nothing (default: the weeks in the specs folder's demo/production.yaml live as production)")
    demo.set_defaults(func=cmd_demo)

    ui = commands.add_parser("ui", help="start the Dagster UI on this state")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)

    mlflow_ui = commands.add_parser("mlflow-ui", help="start the MLflow UI on this state")
    mlflow_ui.add_argument("--host", default="127.0.0.1")
    mlflow_ui.add_argument("--port", type=int, default=5000)
    mlflow_ui.set_defaults(func=cmd_mlflow_ui)

    promote = commands.add_parser("promote", help="approve a version as champion (default: the current challenger)")
    promote.add_argument("model")
    promote.add_argument("--version", help="registered version; default: the challenger")
    promote.add_argument("--by", help="who approves (audit; required, unless approvers have tokens: then the "
                         "token's person, from MLPLATFORM_APPROVER_TOKEN or a prompt; docs/policies.md)")
    promote.add_argument("--reason", help="why (audit)")
    promote.add_argument("--force", action="store_true", help="promote even if a gate failed or the gates ran under an "
                         "older spec (the audit row says so)")
    promote.add_argument("--wait", type=float, default=120.0,
                         help="seconds to wait while a run holds the warehouse's lock (default 120)")
    promote.set_defaults(func=cmd_promote)

    canary = commands.add_parser("canary", help="judge the canary against the champion on the last window of live "
                                 "traffic (error rate, latency p99, predictions); --apply carries the verdict out")
    canary.add_argument("model")
    canary.add_argument("--apply", action="store_true", help="stop a worse canary, raise a good one's share (ramp) or "
                        "promote it (approval: auto, auto_promote: canary), audited, as the hourly sensor does")
    canary.add_argument("--by", help="who runs it (in the audit's actor, with --apply)")
    canary.add_argument("--wait", type=float, default=120.0,
                        help="seconds to wait while a run holds the warehouse's lock (default 120)")
    canary.set_defaults(func=cmd_canary)

    rollback = commands.add_parser("rollback", help="put an earlier champion back (default: the newest one a rollback "
                                     "may restore)")
    rollback.add_argument("model")
    rollback.add_argument("--to", help="an earlier champion (registered version); default: the newest earlier champion "
                          "whose gates passed under the current spec (what the decay sensor picks)")
    rollback.add_argument("--by", help="who decides (audit; required, unless approvers have tokens: then the "
                          "token's person, from MLPLATFORM_APPROVER_TOKEN or a prompt; docs/policies.md)")
    rollback.add_argument("--reason", help="why (audit)")
    rollback.add_argument("--wait", type=float, default=120.0,
                          help="seconds to wait while a run holds the warehouse's lock (default 120)")
    rollback.set_defaults(func=cmd_rollback)

    audit = commands.add_parser("audit", help="print a model's audit trail, or --verify its hash chain (reads the "
                                "warehouse and releases it)")
    audit.add_argument("model")
    audit.add_argument("--verify", action="store_true", help="check the hash chain (keyed with MLPLATFORM_AUDIT_KEY), "
                       "its head against the registry tag and checkpoint, and audit.alias_changes against it: a "
                       "changed, deleted or forged row is named; exit 1")
    audit.add_argument("--verify-log", action="store_true", help="check the model's prediction log against its "
                       "manifest: a deleted, truncated, edited or unlisted segment is named; exit 1")
    audit.add_argument("--aliases", action="store_true", help="the alias-change table instead of the event trail")
    audit.add_argument("--since", type=_iso_date, help="only changes at or after this date (YYYY-MM-DD)")
    audit.add_argument("--json", action="store_true", help="JSON records instead of a table")
    audit.add_argument("--wait", type=float, default=120.0,
                       help="seconds to wait while a run writes to the warehouse (default 120)")
    audit.set_defaults(func=cmd_audit)

    reproduce = commands.add_parser(
        "reproduce", help="retrain a version from its recorded window, spec, params and seed in a scratch place "
        "(nothing registered or moved) and compare fingerprint, metrics and library versions",
        description="Retrain MODEL's VERSION from what it recorded and compare. Exit 0: identical metrics; 1: "
        "metrics or gate verdicts differ (listed); 2: refused, the recorded window's rows changed (the window and "
        "both fingerprints are named) or the version cannot be reproduced.")
    reproduce.add_argument("model")
    reproduce.add_argument("version", help="registered version number")
    reproduce.add_argument("--json", action="store_true", help="the comparison as JSON")
    reproduce.set_defaults(func=cmd_reproduce)

    imported = commands.add_parser(
        "import", help="register a model trained elsewhere (.skops, or .pkl with --allow-pickle) as a gated version",
        description="Register MODEL's FILE as a version: its input columns must be the spec's features; it is "
        "evaluated on the spec's newest complete week and every gate runs against the current champion; the "
        "audit records who, why and the file's SHA-256. No alias moves: promote it like any version. Exit 0: "
        "registered and every gate passed; 1: refused (nothing registered) or registered with a failed gate.")
    imported.add_argument("model")
    imported.add_argument("--file", required=True, help="the model file: .skops (default format), or .pkl/.pickle "
                          "with --allow-pickle")
    imported.add_argument("--by", required=True, help="who imports it (audit; required)")
    imported.add_argument("--reason", required=True, help="why (audit; required)")
    imported.add_argument("--allow-pickle", action="store_true", help="load a pickle file; unpickling RUNS THE CODE "
                          "the file holds: only for files you trust")
    imported.add_argument("--trust", action="append", metavar="TYPE", help="a type outside scikit-learn/NumPy/SciPy "
                          "the skops file may build (repeatable; the refusal names them)")
    imported.add_argument("--wait", type=float, default=120.0,
                          help="seconds to wait while a run holds the warehouse's lock (default 120)")
    imported.set_defaults(func=cmd_import)

    check = commands.add_parser(
        "check", help="CI gate: validate the specs, train each model in memory and run every gate against its "
        "champion (nothing registered)",
        description="Validate the specs, then for each model (or each --model) train on the spec's training window "
        "before its newest complete week, in memory, and run every gate against the current champion on that "
        "week's rows. Nothing is registered, promoted or written. Exit 0: every gate passed; 1: a spec problem or "
        "a failed gate (named in the report).")
    check.add_argument("--model", action="append", help="only this model (repeatable); default: every spec")
    check.add_argument("--against", choices=["champion"], default="champion",
                       help="what the beat_champion gate compares with (default and only choice: the current "
                       "champion in the configured registry)")
    check.set_defaults(func=cmd_check)

    run = commands.add_parser(
        "run", help="run each model's retrain job for its newest complete week on the configured stores (deploy on "
        "merge: the gates and approval decide, the service hot-swaps)",
        description="For each model (or each --model): the retrain job (the week's data, then model, evaluation, "
        "backtest) for the newest complete week, or --week, in this process on the configured Dagster instance and "
        "stores. The version is gated and its aliases move as in every week (rollout.approval). Exit 1 when a run "
        "failed (a failed gate is not a failed run: the version is simply not promoted).")
    run.add_argument("--model", action="append", help="only this model (repeatable); default: every spec")
    run.add_argument("--week", help="the week (Monday, YYYY-MM-DD); default: each model's newest complete week")
    run.set_defaults(func=cmd_run)

    card = commands.add_parser("card", help="a version's model card (Markdown, or --html), fresh from the registry "
                               "and the audit trail")
    card.add_argument("model")
    card.add_argument("--version", help="registered version; default: the champion, else the challenger, else the "
                      "newest")
    card.add_argument("--html", action="store_true", help="HTML instead of Markdown")
    card.add_argument("--output", help="write to this file instead of printing (a new file; never through a "
                      "symbolic link)")
    card.add_argument("--force", action="store_true", help="replace the --output file if it exists")
    card.add_argument("--wait", type=float, default=120.0,
                      help="seconds to wait while a run writes to the warehouse (default 120)")
    card.set_defaults(func=cmd_card)

    backup = commands.add_parser("backup", help="copy the warehouse, MLflow store and Dagster instance, consistently")
    backup.add_argument("--to", help="an empty or new folder; default: MLPLATFORM_HOME/backups/<UTC time>")
    backup.add_argument("--wait", type=float, default=120.0,
                        help="seconds to wait while a run holds the warehouse's lock (default 120)")
    backup.set_defaults(func=cmd_backup)

    validate = commands.add_parser("validate", help="check the model specs and list every problem")
    validate.set_defaults(func=cmd_validate)

    prepare = commands.add_parser("prepare", help="build the dbt manifest if it is missing or stale; create the "
                                  "Dagster instance folder")
    prepare.add_argument("--instance", choices=["embedded", "postgres"], default="embedded",
                         help="embedded (default): SQLite under MLPLATFORM_HOME, one run at a time; postgres: "
                         "dagster.yaml and workspace.yaml for the webserver, daemon and gRPC code server on PostgreSQL "
                         "(MLPLATFORM_DAGSTER_POSTGRES_URL; docs/shared-services.md)")
    prepare.add_argument("--force", action="store_true", help="with --instance postgres: replace edited files")
    prepare.add_argument("--no-pools", action="store_true", help="with --instance postgres: only write the files; do "
                         "not connect to the database to create each model's pool (run again after adding a model)")
    prepare.set_defaults(func=cmd_prepare)

    reference = commands.add_parser("spec-reference", help="write docs/spec-reference.md from the spec model")
    reference.add_argument("--check", action="store_true", help="only check that the file is up to date")
    reference.set_defaults(func=cmd_spec_reference)

    serve = commands.add_parser("serve", help="serve every model's champion over HTTP (docs/serving.md)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", action="append", help="only this model (repeatable); default: every spec")
    serve.add_argument("--max-batch", type=int, default=1000, help="most records in one request (default 1000)")
    serve.add_argument("--poll-seconds", type=float, default=2.0, help="how often aliases are read (default 2)")
    serve.add_argument("--flush-seconds", type=float, default=1.0,
                       help="how often the prediction log is written (default 1; at most this much is lost on SIGKILL)")
    serve.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="time a request's body has to arrive in full (then 408; default 30)")
    serve.add_argument("--drain-seconds", type=float, default=0.0, metavar="SECONDS",
                       help="on SIGTERM, answer /ready with 503 and keep serving this long before stopping, so a "
                       "load balancer takes the replica out first (default 0; set it above the balancer's health "
                       "check interval x its fall count)")
    serve.add_argument("--no-log", action="store_true", help="do not write the prediction log")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    digest = commands.add_parser("token-digest", help="print the sha256: digest of an API or approver token read "
                                 "from stdin, for the tokens file (docs/serving.md, Access; docs/policies.md, "
                                 "Authenticated approvers)")
    digest.set_defaults(func=cmd_token_digest)

    replay = commands.add_parser("replay", help="send a model's feature rows for some weeks to a running service")
    replay.add_argument("model")
    replay.add_argument("--start", required=True, help="first week (Monday, YYYY-MM-DD)")
    replay.add_argument("--weeks", type=int, default=1, help="how many weeks (default 1)")
    replay.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default http://127.0.0.1:8000)")
    replay.add_argument("--batch", type=int, default=100, help="records per request (default 100)")
    replay.set_defaults(func=cmd_replay)

    alerts = commands.add_parser("alerts", help="deliver the alerts that are due (one pass), or send a test alert "
                                 "(docs/alerts.md)")
    alerts.add_argument("action", choices=["deliver", "test"])
    alerts.add_argument("--destination", help="test: only this destination (default: each one)")
    alerts.add_argument("--wait", type=float, default=30.0,
                        help="seconds to wait while a run holds the warehouse's lock (default 30)")
    alerts.set_defaults(func=cmd_alerts)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_process(load_settings())  # the CLI is an entry point: its process-wide settings are made here
    except SettingsError as refused:
        print(f"{refused}\nnothing was done", file=sys.stderr)
        return 2
    from mlplatform.lib.stores import StoresDamaged
    from mlplatform.lib.warehouse import WarehouseDamaged

    try:
        return int(args.func(args) or 0)
    except (WarehouseDamaged, StoresDamaged, SettingsError) as damaged:  # a damaged store, a refused setting: one line
        print(damaged, file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

