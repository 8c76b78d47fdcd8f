"""The ``mlplatform`` command: run the lifecycle, open the UI, validate specs.

Heavy imports (Dagster, dbt) happen inside the commands, so ``mlplatform --help``
and ``mlplatform validate`` answer quickly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mlplatform.lib.settings import Settings, ensure_home, load_settings

DAGSTER_YAML = """\
# Written by mlplatform. Local embedded storage under MLPLATFORM_HOME.
telemetry:
  enabled: false
concurrency:
  runs:
    # DuckDB allows one writer per file: queue runs instead of letting them collide.
    max_concurrent_runs: 1
"""


def prepare_dagster_home(settings: Settings) -> None:
    """Point Dagster at ``MLPLATFORM_HOME/dagster`` and give it an instance config once."""
    ensure_home(settings)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    config = settings.dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)


def cmd_validate(args: argparse.Namespace) -> int:
    from mlplatform.defs.dbt_project import prepare_manifest
    from mlplatform.specs import SpecError, dbt_manifest_columns, load_specs

    settings = load_settings()
    ensure_home(settings)
    try:
        specs = load_specs(settings.specs_dir, dbt_manifest_columns(prepare_manifest()))
    except SpecError as error:
        print(error, file=sys.stderr)
        return 1
    for spec in specs:
        print(f"ok  {spec.name:<20} {spec.task:<11} {spec.spec_file}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mlplatform.defs.dbt_project import prepare_manifest

    settings = load_settings()
    prepare_dagster_home(settings)  # so `dagster ...` commands with DAGSTER_HOME set work before any demo
    print(f"dbt manifest: {prepare_manifest()}")
    print(f"DAGSTER_HOME={settings.dagster_home}")
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
    from mlplatform.lib.tracking import CHALLENGER, CHAMPION, Tracker
    from mlplatform.runner import RunRequestError, run_models, summary_table
    from mlplatform.specs import SpecError

    settings = load_settings()
    prepare_dagster_home(settings)
    try:
        results = run_models(models=args.model or None, first=args.start, last=args.end, weeks=args.weeks)
    except (SpecError, RunRequestError) as error:
        print(f"{error}\nnothing was run", file=sys.stderr)
        return 1
    tracker = Tracker.configured(settings.mlflow_dir)
    champions = {r.model: tracker.alias_version(r.model, CHAMPION) for r in results}
    print()
    print(summary_table(results, settings.warehouse_path, champions))
    print()
    print(f"State is in {settings.home}. Explore it:")
    print("  Dagster UI:  python3 dev.py ui         (http://127.0.0.1:3000)")
    print("  MLflow UI:   python3 dev.py mlflow-ui  (http://127.0.0.1:5000)")
    for r in results:
        if champions.get(r.model) is None and tracker.alias_version(r.model, CHALLENGER) is not None:
            print(f"  {r.model} waits for a person (rollout.approval: manual): "
                  f"python3 dev.py promote {r.model} --by <your name> --reason <why>")
        elif champions.get(r.model) is None:
            print(f"  {r.model} has no champion: no version passed every gate")
    return 0 if all(r.success for r in results) else 1


def mlflow_ui_command(settings: Settings, host: str, port: int) -> list[str] | str:
    """The `mlflow ui` command on the store the platform tracks to, or why none is needed (a tracking server)."""
    uri = os.environ.get("MLPLATFORM_MLFLOW_TRACKING_URI", "").strip()
    if uri.startswith(("http://", "https://", "databricks")):
        ui = os.environ.get("MLPLATFORM_MLFLOW_UI_URL", uri)
        return f"models are tracked on the MLflow server {uri} (MLPLATFORM_MLFLOW_TRACKING_URI): open its UI at {ui}"
    if not uri:
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}"
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


def cmd_promote(args: argparse.Namespace) -> int:
    """A person approves a version: it becomes champion, and the audit table says who, when and why.

    The audit row and the alias move together: the row is written in a transaction that commits
    only after the alias moved, so a failure on either side leaves both as they were.
    """
    from mlflow.exceptions import MlflowException

    from mlplatform.lib.audit import record_alias_changes
    from mlplatform.lib.lifecycle import AliasChange
    from mlplatform.lib.tracking import CHAMPION, Tracker
    from mlplatform.lib.warehouse import WarehouseBusy, connect_when_free

    settings = load_settings()
    ensure_home(settings)
    tracker = Tracker.configured(settings.mlflow_dir)
    version = args.version or tracker.alias_version(args.model, "challenger")
    if version is None:
        print(f"{args.model} has no challenger to promote; give --version", file=sys.stderr)
        return 1
    try:
        tags = tracker.version_tags(args.model, version)
    except MlflowException:
        print(f"{args.model} v{version}: no such registered model version in {tracker.tracking_uri}; "
              "`python3 dev.py mlflow-ui` lists them", file=sys.stderr)
        return 1
    if tags.get("gates") != "passed" and not args.force:
        print(f"{args.model} v{version} did not pass every gate (gates={tags.get('gates')}); "
              "refusing to promote without --force", file=sys.stderr)
        return 1
    previous = tracker.alias_version(args.model, CHAMPION)
    if previous == str(version):
        print(f"{args.model}: v{version} is already the champion; nothing changed")
        return 0
    reason = args.reason or "manual approval"
    if tags.get("gates") != "passed":  # forced: the audit says so, whatever the person wrote
        reason += f" [forced with --force: gates={tags.get('gates')}]"
    change = AliasChange(args.model, CHAMPION, str(version), previous, args.by, reason, tags.get("week"))
    try:
        connection = connect_when_free(settings.warehouse_path, args.wait)
    except WarehouseBusy as busy:
        print(f"{args.model}: not promoted, nothing changed: {busy}. A run is probably writing to it; "
              "try again when it ends, or give --wait SECONDS", file=sys.stderr)
        return 1
    with connection:
        connection.begin()
        record_alias_changes(connection, [change.as_row()])
        try:
            tracker.set_alias(args.model, CHAMPION, str(version))
        except MlflowException as error:
            connection.rollback()
            print(f"{args.model}: not promoted, nothing changed: the registry refused the alias: {error}",
                  file=sys.stderr)
            return 1
        connection.commit()
    print(f"{args.model}: champion v{previous or '-'} -> v{version} (approved by {args.by})")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """``dagster dev`` on this code location with the instance under MLPLATFORM_HOME."""
    settings = load_settings()
    prepare_dagster_home(settings)
    command = [sys.executable, "-m", "dagster", "dev", "-m", "mlplatform.definitions",
               "--host", args.host, "--port", str(args.port)]
    # `dagster dev` still works and is what workspace.yaml users run; its "use dg dev" notice is not for our users.
    os.environ["PYTHONWARNINGS"] = "ignore:Function `dev_command` is superseded"
    print(f"Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME={settings.dagster_home}); Ctrl-C stops it")
    os.execv(sys.executable, command)
    return 0  # pragma: no cover - execv does not return


def _served_specs(settings: Settings, names: Sequence[str] | None) -> list:
    """The specs of the models to serve or replay, loaded as `validate` loads them.

    An existing dbt manifest is read as it is (serving runs no dbt; it only checks staged column names), which
    saves importing dagster-dbt (~2-7 s) at every start; without one it is prepared as `validate` does.
    """
    from mlplatform.lib.settings import DBT_PROJECT_DIR
    from mlplatform.serving.server import select_specs
    from mlplatform.specs import dbt_manifest_columns, load_specs

    manifest = DBT_PROJECT_DIR / "target" / "manifest.json"
    if not manifest.exists():
        from mlplatform.defs.dbt_project import prepare_manifest

        manifest = prepare_manifest()
    return select_specs(load_specs(settings.specs_dir, dbt_manifest_columns(manifest)), names)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve every spec'd model's champion over HTTP (canary, shadow, prediction log, hot swap)."""
    from mlplatform.lib.tracking import Tracker
    from mlplatform.serving.app import ServingConfig
    from mlplatform.serving.server import ServerOptions, serve
    from mlplatform.specs import SpecError

    settings = load_settings()
    ensure_home(settings)
    try:
        specs = _served_specs(settings, args.model)
    except (SpecError, ValueError) as error:
        print(f"{error}\nnothing is served", file=sys.stderr)
        return 1
    config = ServingConfig(home=settings.home, specs=specs, tracker=Tracker.configured(settings.mlflow_dir),
                           poll_seconds=args.poll_seconds, flush_seconds=args.flush_seconds,
                           max_batch=args.max_batch, log_predictions=not args.no_log)
    print(f"serving {', '.join(s.name for s in specs)} on http://{args.host}:{args.port} (API docs at /docs; "
          f"prediction log {'off' if args.no_log else settings.home / 'prediction_log'}); Ctrl-C stops it",
          flush=True)
    serve(config, ServerOptions(host=args.host, port=args.port, log_level=args.log_level))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlplatform", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the lifecycle of every model on its data and print a summary")
    demo.add_argument("--model", action="append", help="only this model (repeatable); default: all specs")
    demo.add_argument("--start", help="first week (Monday, YYYY-MM-DD); default: the spec's first week")
    demo.add_argument("--end", help="last week (Monday, YYYY-MM-DD); default: the spec's last week")
    demo.add_argument("--weeks", type=int, help="only N weeks, from --start (default: the spec's first week)")
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
    promote.add_argument("--by", default=os.environ.get("USER", "unknown"), help="who approves (audit)")
    promote.add_argument("--reason", help="why (audit)")
    promote.add_argument("--force", action="store_true", help="promote even if a gate failed")
    promote.add_argument("--wait", type=float, default=120.0,
                         help="seconds to wait while a run holds the warehouse's lock (default 120)")
    promote.set_defaults(func=cmd_promote)

    validate = commands.add_parser("validate", help="check the model specs and list every problem")
    validate.set_defaults(func=cmd_validate)

    prepare = commands.add_parser("prepare", help="build the dbt manifest if it is missing or stale; create the "
                                  "Dagster instance folder")
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
    serve.add_argument("--no-log", action="store_true", help="do not write the prediction log")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    replay = commands.add_parser("replay", help="send a model's feature rows for some weeks to a running service")
    replay.add_argument("model")
    replay.add_argument("--start", required=True, help="first week (Monday, YYYY-MM-DD)")
    replay.add_argument("--weeks", type=int, default=1, help="how many weeks (default 1)")
    replay.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default http://127.0.0.1:8000)")
    replay.add_argument("--batch", type=int, default=100, help="records per request (default 100)")
    replay.set_defaults(func=cmd_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

