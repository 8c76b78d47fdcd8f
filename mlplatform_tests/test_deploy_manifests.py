"""The Kubernetes deliverables, validated offline (nothing here deploys them; docs/deployment.md says what is not tested).

- every manifest in deploy/k8s/ against the Kubernetes API schema (kubernetes-validate ships the schemas; strict mode:
  an unknown or misspelt field fails);
- the dagster.yaml the Dagster chart renders from deploy/helm/dagster-values.yaml against Dagster's own loader
  (``dagster_instance_config``), and every class it names loaded and given its config as Dagster does;
- every command the Dockerfile, the manifests and the chart run in the image, parsed by the real CLI of the pinned
  package (``mlplatform``'s argparse, dagster's and mlflow's click commands): a wrong flag or module name fails here;
- the pieces that must agree across files (ports, selectors, the tracking URI and MLflow's allowed hosts, the user,
  the pools and limits of the tested local dagster.yaml).
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "k8s"
HELM_VALUES = ROOT / "deploy" / "helm" / "dagster-values.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

KUBERNETES_VERSION = "1.33.0"
"""The API version the manifests are validated against (kubernetes-validate 1.37.0 ships 1.25 to 1.37)."""

CHART_WORKSPACE = "/dagster-workspace/workspace.yaml"
"""Where the Dagster chart mounts the workspace it writes for the webserver and the daemon."""

CLICK_COMMANDS = {
    "dagster": "dagster._cli:cli",
    "dagster-daemon": "dagster._daemon.cli:cli",
    "dagster-webserver": "dagster_webserver.cli:dagster_webserver",
    "mlflow": "mlflow.cli:cli",
}
"""The click command behind each console script the image runs (the scripts' own entry points wrap these)."""


# --- loading ------------------------------------------------------------------------------------------------------


@cache
def _manifests() -> tuple[tuple[str, dict], ...]:
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path.name, document))
    return tuple(found)


def manifests() -> list[tuple[str, dict]]:
    return copy.deepcopy(list(_manifests()))


def resource(kind: str, name: str) -> dict:
    matches = [doc for _, doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} named {name} in {K8S_DIR}, found {len(matches)}"
    return matches[0]


def helm_values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def pod_specs() -> Iterator[tuple[str, dict]]:
    """Every pod template in the manifests, by the name of its workload."""
    for _, doc in manifests():
        if doc["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def container(kind: str, name: str) -> dict:
    containers = resource(kind, name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{kind}/{name}: expected one container"
    return containers[0]


def env_of(container_spec: dict) -> dict[str, Any]:
    """A container's env as name -> value (or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container_spec.get("env", [])}


def container_port(container_spec: dict, port: int | str) -> int:
    """A probe's or Service's port (a number, or the name of one of the container's ports) as a number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container_spec.get("ports", []) if "name" in p}
    assert port in named, f"port {port!r} names none of the container's ports {named}"
    return named[port]


def locked_version(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)$", (ROOT / "requirements.lock").read_text(), re.MULTILINE)
    assert match, f"{package} is not pinned in requirements.lock"
    return match.group(1)


# --- the Dockerfile -----------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_args(after_from: bool = True) -> dict[str, str]:
    """ARG defaults; by default only those declared after FROM (the ones RUN and ENV can see)."""
    args, seen_from = {}, False
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            seen_from = True
        elif keyword == "ARG" and (seen_from or not after_from):
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def dockerfile_runs() -> str:
    return "\n".join(rest for keyword, rest in dockerfile_instructions() if keyword == "RUN")


def dockerfile_user() -> str:
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users, "the Dockerfile never switches away from root"
    return users[-1]


def dockerfile_cmd() -> list[str]:
    cmds = [rest for keyword, rest in dockerfile_instructions() if keyword == "CMD"]
    assert len(cmds) == 1
    return json.loads(cmds[0])  # exec form: no shell between the signal and the server


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative to the build context) out of the image's build context."""
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions (!pattern) are not understood by this check"
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.strip("/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(
                    Path(prefix).name, pattern[3:])):
                return True
    return False


# --- the CLIs -----------------------------------------------------------------------------------------------------


@cache
def console_scripts() -> dict[str, str]:
    return {e.name: e.value for e in entry_points(group="console_scripts")}


def parse_command(argv: list[str]) -> dict[str, Any]:
    """Parse a command the image runs with the real CLI of the installed package; return the parsed parameters
    (plus ``_command``, the subcommand path). A missing script, subcommand or flag fails the calling test."""
    script, rest = argv[0], list(argv[1:])
    assert script in console_scripts(), f"{script}: no such console script in the environment the image installs"
    if script == "mlplatform":
        assert console_scripts()["mlplatform"] == "mlplatform.cli:main"
        from mlplatform.cli import build_parser

        try:
            parsed = build_parser().parse_args(rest)
        except SystemExit as exit_:
            pytest.fail(f"`{shlex.join(argv)}`: mlplatform's parser refused it (exit {exit_.code})")
        return {**vars(parsed), "_command": ["mlplatform", parsed.command]}
    module, _, attribute = CLICK_COMMANDS[script].partition(":")
    command: click.Command = getattr(importlib.import_module(module), attribute)
    path = [script]
    while isinstance(command, click.Group):
        assert rest, f"`{shlex.join(argv)}`: {shlex.join(path)} needs a subcommand"
        name = rest.pop(0)
        assert name in command.commands, f"`{shlex.join(argv)}`: {shlex.join(path)} has no subcommand {name!r}"
        command, path = command.commands[name], [*path, name]
    try:
        context = command.make_context(" ".join(path), rest)
    except click.ClickException as error:
        pytest.fail(f"`{shlex.join(argv)}`: {error.format_message()}")
    return {**context.params, "_command": path}


# --- the chart's dagster.yaml -------------------------------------------------------------------------------------


def _configurable(entry: dict) -> dict:
    return {"module": entry["module"], "class": entry["class"], "config": entry.get("config") or {}}


def chart_instance_config(values: dict, namespace: str = "mlplatform") -> dict:
    """The dagster.yaml the Dagster chart (templates/configmap-instance.yaml and helpers/instance/) renders from
    these values, for the settings our values use; anything else fails loudly instead of being skipped.

    This is a transcription of the chart's mapping (camelCase values -> snake_case instance keys), not the chart:
    ``helm template`` is not run here (docs/deployment.md).
    """
    instance: dict[str, Any] = {}
    scheduler = values["scheduler"]
    assert scheduler["type"] == "CustomScheduler", "only the custom scheduler entry is transcribed"
    instance["scheduler"] = _configurable(scheduler["config"]["customScheduler"])

    pg = values["postgresql"]
    assert pg["enabled"] is False, "an external PostgreSQL is expected"
    postgres_db = {"username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
                   "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"],
                   "port": pg["service"]["port"], "params": pg.get("postgresqlParams") or {}}
    if pg.get("postgresqlScheme"):
        postgres_db["scheme"] = pg["postgresqlScheme"]
    for key, module, cls in [("schedule_storage", "dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
                             ("run_storage", "dagster_postgres.run_storage", "PostgresRunStorage"),
                             ("event_log_storage", "dagster_postgres.event_log", "PostgresEventLogStorage")]:
        instance[key] = {"module": module, "class": cls, "config": {"postgres_db": dict(postgres_db)}}

    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    instance["run_launcher"] = {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": {
        "load_incluster_config": k8s["loadInclusterConfig"], "job_namespace": k8s.get("jobNamespace") or namespace,
        "image_pull_policy": k8s["imagePullPolicy"], "service_account_name": "dagster",
        "dagster_home": {"env": "DAGSTER_HOME"}, "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
        "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"},
        "env_config_maps": [{"env": "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP"}]}}

    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    if daemon["enabled"] and coordinator["enabled"]:
        assert coordinator["type"] == "CustomRunCoordinator", "only the custom run coordinator entry is transcribed"
        instance["run_coordinator"] = _configurable(coordinator["config"]["customRunCoordinator"])

    logs = values["computeLogManager"]
    assert logs["type"] == "CustomComputeLogManager"
    instance["compute_logs"] = _configurable(logs["config"]["customComputeLogManager"])

    monitoring = daemon.get("runMonitoring") or {}
    if daemon["enabled"] and monitoring.get("enabled"):
        keys = {"enabled": "enabled", "startTimeoutSeconds": "start_timeout_seconds",
                "cancelTimeoutSeconds": "cancel_timeout_seconds", "maxResumeRunAttempts": "max_resume_run_attempts",
                "pollIntervalSeconds": "poll_interval_seconds",
                "freeSlotsAfterRunEndSeconds": "free_slots_after_run_end_seconds"}
        unknown = set(monitoring) - set(keys)
        assert not unknown, f"runMonitoring keys the chart does not render: {unknown}"
        instance["run_monitoring"] = {keys[k]: v for k, v in monitoring.items() if v is not None}

    instance["telemetry"] = {"enabled": values["telemetry"]["enabled"]}

    concurrency = values.get("concurrency") or {}
    if concurrency.get("enabled"):
        pools, runs = concurrency.get("pools") or {}, concurrency.get("runs") or {}
        rendered: dict[str, Any] = {}
        pool_keys = {"defaultLimit": "default_limit", "granularity": "granularity",
                     "opGranularityRunBuffer": "op_granularity_run_buffer"}
        if any(pools.get(k) is not None for k in pool_keys):
            rendered["pools"] = {pool_keys[k]: v for k, v in pools.items() if v is not None}
        run_keys = {"maxConcurrentRuns": "max_concurrent_runs", "tagConcurrencyLimits": "tag_concurrency_limits"}
        if runs.get("maxConcurrentRuns") is not None or runs.get("tagConcurrencyLimits"):
            rendered["runs"] = {run_keys[k]: v for k, v in runs.items() if v not in (None, [])}
        instance["concurrency"] = rendered
    return instance


def load_instance_config(config: dict, folder: Path) -> dict:
    """Dagster's own loader of a dagster.yaml: schema, storage and concurrency checks, as every Dagster process
    runs it when it loads the instance."""
    from dagster._core.instance.config import dagster_instance_config

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    validated, _ = dagster_instance_config(str(folder))
    return dict(validated)


# ==================================================================================================================
# Kubernetes schema
# ==================================================================================================================


@pytest.mark.parametrize("source,document", _manifests(),
                         ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in _manifests()])
def test_each_manifest_validates_against_the_kubernetes_schema(source: str, document: dict) -> None:
    assert kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True) == "1.33"


def test_the_manifests_are_the_expected_resources() -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in manifests())
    assert kinds == sorted([
        ("Deployment", "mlplatform-serving"), ("Service", "mlplatform-serving"),
        ("HorizontalPodAutoscaler", "mlplatform-serving"), ("PodDisruptionBudget", "mlplatform-serving"),
        ("Job", f"mlflow-db-upgrade-{locked_version('mlflow').replace('.', '-')}"), ("Deployment", "mlflow"),
        ("Service", "mlflow"), ("PersistentVolumeClaim", "mlplatform-home")])


def validate_fragment(fragment: Any, type_schema: str) -> None:
    """Validate a piece of a pod spec (as the Helm values carry them) against the Kubernetes schema of its type
    (``type_schema``: a file of kubernetes-validate's schemas, e.g. ``volume-v1.json``), strict like the manifests."""
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"
    schema = schema_contents(f"{folder}/{type_schema}", KUBERNETES_VERSION)
    definitions = schema_contents(f"{folder}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    jsonschema.validators.Draft202012Validator(schema, registry=registry).validate(fragment)


def helm_pod_fragments(values: dict) -> list[tuple[str, Any, str]]:
    """(where, fragment, its Kubernetes type's schema) for every pod-spec piece the chart copies from the values."""
    code = values["dagster-user-deployments"]["deployments"][0]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    fragments = [("code server volumes", v, "volume-v1.json") for v in code["volumes"]]
    fragments += [("code server volumeMounts", m, "volumemount-v1.json") for m in code["volumeMounts"]]
    fragments += [("run pods container securityContext", launcher["securityContext"], "securitycontext-v1.json")]
    for role, settings in [("webserver", values["dagsterWebserver"]), ("daemon", values["dagsterDaemon"]),
                           ("code server", code)]:
        fragments.append((f"{role} podSecurityContext", settings["podSecurityContext"], "podsecuritycontext-v1.json"))
        fragments.append((f"{role} resources", settings["resources"], "resourcerequirements-v1.json"))
    return fragments


def test_the_pod_settings_in_the_helm_values_validate_against_the_kubernetes_schema() -> None:
    """The chart copies these into the pods it renders: a typo would only show at `helm install` or in a pod."""
    values = helm_values()
    for where, fragment, type_schema in helm_pod_fragments(values):
        try:
            validate_fragment(fragment, type_schema)
        except jsonschema.ValidationError as error:
            pytest.fail(f"{where}: {error.message}")
    code = values["dagster-user-deployments"]["deployments"][0]
    code["volumes"][0]["persistentVolumeClaim"]["claimname"] = code["volumes"][0]["persistentVolumeClaim"].pop(
        "claimName")
    with pytest.raises(jsonschema.ValidationError, match="claimname"):
        validate_fragment(code["volumes"][0], "volume-v1.json")


def test_strict_validation_refuses_a_misspelt_field_and_a_wrong_type() -> None:
    """The validator is not a formality: the same Deployment with one field misspelt, or one value of the wrong
    type, is refused offline."""
    misspelt = resource("Deployment", "mlplatform-serving")
    probe_container = misspelt["spec"]["template"]["spec"]["containers"][0]
    probe_container["readinesProbe"] = probe_container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = resource("Deployment", "mlplatform-serving")
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="two"):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


# ==================================================================================================================
# serving: Deployment, Service, HPA, PDB
# ==================================================================================================================


def test_the_serving_command_is_mlplatform_serve_on_the_containers_port() -> None:
    serve = container("Deployment", "mlplatform-serving")
    params = parse_command(serve["command"] + serve.get("args", []))
    assert params["_command"] == ["mlplatform", "serve"]
    assert params["host"] == "0.0.0.0", "bound to loopback, the Service could not reach it"
    assert params["port"] == container_port(serve, "http")
    assert not params["no_log"], "the prediction log feeds drift, labels and live performance: it must stay on"


def test_probes_ask_the_service_paths_that_answer(tmp_path: Path) -> None:
    """Readiness on /ready (503 until every champion is loaded: test_serving covers that), liveness on /health;
    both on the serving port, and both paths answer in the real application."""
    from mlplatform.serving.app import ServingConfig, create_app

    serve = container("Deployment", "mlplatform-serving")
    assert serve["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert serve["livenessProbe"]["httpGet"]["path"] == "/health"
    port = parse_command(serve["command"])["port"]
    probes = [serve[name]["httpGet"] for name in ("readinessProbe", "livenessProbe", "startupProbe")]
    assert all(container_port(serve, probe["port"]) == port for probe in probes)

    import httpx

    async def answers(app, path: str) -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pod") as client:
            return (await client.get(path)).status_code

    app = create_app(ServingConfig(home=tmp_path, specs=[], tracker=None))
    assert {probe["path"]: asyncio.run(answers(app, probe["path"])) for probe in probes} == {"/ready": 200,
                                                                                            "/health": 200}
    assert asyncio.run(answers(app, "/readyz")) == 404  # a wrong path would not answer


def test_service_hpa_and_pdb_select_the_serving_pods() -> None:
    deployment = resource("Deployment", "mlplatform-serving")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {"Deployment": deployment["spec"]["selector"]["matchLabels"],
                 "Service": resource("Service", "mlplatform-serving")["spec"]["selector"],
                 "PodDisruptionBudget": resource("PodDisruptionBudget", "mlplatform-serving")["spec"]["selector"][
                     "matchLabels"]}
    for kind, selector in selectors.items():
        assert selector and selector.items() <= pod_labels.items(), f"the {kind} selects no serving pod"
    service_port = resource("Service", "mlplatform-serving")["spec"]["ports"][0]
    serve = container("Deployment", "mlplatform-serving")
    assert container_port(serve, service_port["targetPort"]) == parse_command(serve["command"])["port"]

    hpa = resource("HorizontalPodAutoscaler", "mlplatform-serving")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mlplatform-serving"}
    pdb = resource("PodDisruptionBudget", "mlplatform-serving")["spec"]
    # a PDB that allows no eviction at the HPA's floor would block every node drain
    assert pdb["minAvailable"] < hpa["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["maxReplicas"]
    cpu_metrics = [m for m in hpa["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu_metrics and "cpu" in serve["resources"]["requests"], "CPU utilization needs a CPU request"


def test_the_grace_period_covers_the_drain() -> None:
    """SIGTERM comes after preStop; uvicorn then finishes in-flight requests (ServerOptions.graceful_seconds) and the
    prediction log flushes: the kubelet's SIGKILL must come later than all of that."""
    from mlplatform.serving.server import ServerOptions

    pod = resource("Deployment", "mlplatform-serving")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + ServerOptions().graceful_seconds


def test_serving_spools_its_log_locally_and_sends_it_where_the_runs_read_it() -> None:
    serve = container("Deployment", "mlplatform-serving")
    env = env_of(serve)
    mounts = {m["name"]: m["mountPath"] for m in serve["volumeMounts"]}
    volumes = {v["name"]: v for v in resource("Deployment", "mlplatform-serving")["spec"]["template"]["spec"][
        "volumes"]}
    spool = [name for name, path in mounts.items() if path == env["MLPLATFORM_HOME"]]
    assert spool and "emptyDir" in volumes[spool[0]], "the serving pod's home is its own scratch space, not shared"
    code_location = helm_values()["dagster-user-deployments"]["deployments"][0]["env"]
    assert env["MLPLATFORM_PREDICTION_LOG_URI"].startswith("s3://")
    assert env["MLPLATFORM_PREDICTION_LOG_URI"] == code_location["MLPLATFORM_PREDICTION_LOG_URI"], \
        "the drift, labels and live-performance runs must read the log where the replicas write it"


# ==================================================================================================================
# MLflow: migration Job, server, Service
# ==================================================================================================================


def test_the_mlflow_server_proxies_s3_artifacts_and_reads_its_store_from_the_environment() -> None:
    server = container("Deployment", "mlflow")
    params = parse_command(server["command"])
    assert params["_command"] == ["mlflow", "server"]
    assert params["artifacts_destination"].startswith("s3://")
    assert params["serve_artifacts"] is True
    assert "--serve-artifacts" in server["command"], "explicit: the proxy must not depend on MLflow's default"
    assert params["port"] == container_port(server, "http")
    import mlflow.cli

    option = next(p for p in mlflow.cli.server.params if p.name == "backend_store_uri")
    assert option.envvar in env_of(server), "the backend store would default to a local SQLite file"
    assert "secretKeyRef" in env_of(server)[option.envvar], "the database password belongs in a Secret"


def test_the_migration_job_upgrades_the_same_database_with_this_mlflow() -> None:
    job = resource("Job", f"mlflow-db-upgrade-{locked_version('mlflow').replace('.', '-')}")
    upgrade = job["spec"]["template"]["spec"]["containers"][0]
    params = parse_command(upgrade["command"])
    assert params["_command"] == ["mlflow", "db", "upgrade"]
    assert params["url"] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert env_of(upgrade)["MLFLOW_BACKEND_STORE_URI"] == env_of(container("Deployment", "mlflow"))[
        "MLFLOW_BACKEND_STORE_URI"]
    assert upgrade["image"] == container("Deployment", "mlflow")["image"], "migrate with the server's MLflow"


def test_every_variable_a_command_names_is_defined_in_its_container() -> None:
    """Kubernetes leaves an undefined $(NAME) in the command as it is: mlflow would get the literal text."""
    for workload, pod in pod_specs():
        for spec in pod["containers"]:
            named = set(re.findall(r"\$\((\w+)\)", " ".join(spec.get("command", []) + spec.get("args", []))))
            assert named <= set(env_of(spec)), f"{workload}: {named - set(env_of(spec))} undefined"


def test_the_tracking_uri_reaches_the_mlflow_service_and_its_allowed_hosts() -> None:
    """Serving and the code location (runs, CLI) track to the MLflow Service by name; the server accepts that Host
    header (MLflow answers 403 to hosts it does not allow) and refuses others."""
    from mlflow.server.security_utils import is_allowed_host_header

    service = resource("Service", "mlflow")
    mlflow_pods = resource("Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= mlflow_pods.items()
    server = container("Deployment", "mlflow")
    port = service["spec"]["ports"][0]
    assert container_port(server, port["targetPort"]) == parse_command(server["command"])["port"]
    allowed = parse_command(server["command"])["allowed_hosts"].split(",")
    uris = {"serving": env_of(container("Deployment", "mlplatform-serving"))["MLPLATFORM_MLFLOW_TRACKING_URI"],
            "code location": helm_values()["dagster-user-deployments"]["deployments"][0]["env"][
                "MLPLATFORM_MLFLOW_TRACKING_URI"]}
    for who, uri in uris.items():
        parts = urlsplit(uri)
        assert (parts.scheme, parts.hostname, parts.port) == ("http", service["metadata"]["name"], port["port"]), who
        assert is_allowed_host_header(allowed, parts.netloc), f"{who}: MLflow would refuse Host {parts.netloc}"
    assert not is_allowed_host_header(allowed, "attacker.example:5000")


def test_serving_holds_no_artifact_store_credentials() -> None:
    """Models come through the server's artifact proxy: the serving pods get the log bucket's Secret only."""
    serving_secrets = {s["secretRef"]["name"] for s in container("Deployment", "mlplatform-serving")["envFrom"]}
    mlflow_secrets = {s["secretRef"]["name"] for s in container("Deployment", "mlflow")["envFrom"]}
    assert serving_secrets and not serving_secrets & mlflow_secrets


# ==================================================================================================================
# Helm values: the Dagster instance
# ==================================================================================================================


def test_the_chart_renders_an_instance_config_dagster_loads(tmp_path: Path) -> None:
    validated = load_instance_config(chart_instance_config(helm_values()), tmp_path / "dagster_home")
    assert validated["run_launcher"]["class"] == "K8sRunLauncher"
    assert validated["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert validated["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}
    assert validated["run_monitoring"]["enabled"] is True
    assert {validated[k]["module"] for k in ("run_storage", "event_log_storage", "schedule_storage")} <= {
        "dagster_postgres.run_storage", "dagster_postgres.event_log", "dagster_postgres.schedule_storage"}


def test_the_dagster_database_url_names_an_installed_driver() -> None:
    """dagster-postgres builds its URL from the rendered postgres_db; SQLAlchemy loads the driver that URL names
    (a bare postgresql:// means psycopg 3 to SQLAlchemy 2.1, which is not installed: every process would fail)."""
    import sqlalchemy
    from dagster_postgres.utils import get_conn_string

    config = chart_instance_config(helm_values())
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        postgres_db = {**config[key]["config"]["postgres_db"], "password": "from-the-secret"}
        engine = sqlalchemy.create_engine(get_conn_string(**postgres_db))  # imports the driver, connects to nothing
        assert engine.dialect.driver == "psycopg2", key


def test_dagster_refuses_a_wrong_pool_setting(tmp_path: Path) -> None:
    """The same values with a pool granularity Dagster does not know are refused by its loader."""
    from dagster._core.errors import DagsterInvalidConfigError

    values = helm_values()
    values["concurrency"]["pools"]["granularity"] = "model"
    with pytest.raises(DagsterInvalidConfigError, match="granularity"):
        load_instance_config(chart_instance_config(values), tmp_path / "dagster_home")


@pytest.mark.parametrize("key", ["scheduler", "run_coordinator", "compute_logs", "run_storage", "event_log_storage",
                                 "schedule_storage"])
def test_each_class_the_instance_names_loads_and_accepts_its_config(key: str) -> None:
    """What Dagster does when it builds the instance: import the class and check its config against its schema.
    (The run launcher's class, dagster_k8s.K8sRunLauncher, is not in requirements.lock: see the Dockerfile.)"""
    from dagster._config import validate_config
    from dagster._serdes import ConfigurableClass
    from dagster._serdes.config_class import class_from_code_pointer

    entry = chart_instance_config(helm_values())[key]
    cls = class_from_code_pointer(entry["module"], entry["class"])
    assert issubclass(cls, ConfigurableClass)
    result = validate_config(cls.config_type(), entry["config"])
    assert result.success, [error.message for error in result.errors]


def test_pools_and_limits_equal_the_tested_local_shared_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kubernetes instance enforces what the services stage tests with the real daemon: the same concurrency
    block (a pool per model at granularity run, limit 1; the same run limit), run monitoring and coordinator."""
    instance_config = pytest.importorskip(
        "mlplatform.lib.instance_config", reason="mlplatform.lib.instance_config (the local shared dagster.yaml) is "
        "not on this branch yet")
    for name in [n for n in os.environ if n.startswith("MLPLATFORM_DAGSTER_")]:
        monkeypatch.delenv(name)  # the defaults, as `mlplatform prepare --instance postgres` writes them
    local = instance_config.shared_instance_config()
    chart = chart_instance_config(helm_values())
    assert chart["concurrency"] == local["concurrency"]
    assert chart["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}
    assert chart["run_monitoring"] == local["run_monitoring"]
    assert (chart["run_coordinator"]["module"], chart["run_coordinator"]["class"]) == (
        local["run_coordinator"]["module"], local["run_coordinator"]["class"])


def test_the_code_server_the_chart_starts_serves_our_code_location() -> None:
    """The chart runs `dagster code-server start -h 0.0.0.0 -p PORT <codeServerArgs>`; its health probe is
    `dagster api grpc-health-check -p PORT`. Both parse with the pinned dagster, the module exists, and the location
    name is the local workspace's (the UI shows the same location in both deployments)."""
    deployment = helm_values()["dagster-user-deployments"]["deployments"][0]
    port = str(deployment["port"])
    params = parse_command(["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", port,
                            *deployment["codeServerArgs"]])
    assert importlib.util.find_spec(params["module_name"]) is not None
    local = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert (params["module_name"], params["location_name"]) == (local["module_name"], local["location_name"])
    assert parse_command(["dagster", "api", "grpc-health-check", "-p", port])["port"] == int(port)


def test_the_webserver_daemon_and_run_commands_exist_in_the_image(tmp_path: Path) -> None:
    """The chart runs `dagster-webserver ... -w <workspace>` and `dagster-daemon run -w <workspace>` in the image we
    give it, and each run's pod runs `dagster api execute_run`."""
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text("load_from: []\n")
    webserver = parse_command(["dagster-webserver", "-h", "0.0.0.0", "-p", "80", "-w", str(workspace)])
    assert webserver["port"] == 80
    assert parse_command(["dagster-daemon", "run", "-w", str(workspace)])["_command"] == ["dagster-daemon", "run"]
    import dagster._cli

    assert "execute_run" in dagster._cli.cli.commands["api"].commands


# ==================================================================================================================
# one image
# ==================================================================================================================


def test_the_image_installs_the_lock_with_the_uv_dev_py_pins() -> None:
    dev = importlib.util.module_from_spec(spec := importlib.util.spec_from_file_location("dev", ROOT / "dev.py"))
    spec.loader.exec_module(dev)
    assert dockerfile_args()["UV_VERSION"] == dev.UV_VERSION
    runs = dockerfile_runs()
    assert '"uv==${UV_VERSION}"' in runs
    assert "--compile-bytecode" in runs and "-r requirements.lock" in runs
    assert "--no-deps -e ." in runs, "installed as dev.py does (the package finds dbt_project/ beside itself)"
    assert "mlplatform prepare" in runs, "the dbt manifest is built into the image"


def test_dagster_k8s_is_installed_at_the_release_of_the_locked_dagster_postgres() -> None:
    """dagster-k8s (the run launcher) is not in the lock: it is installed with the lock as constraints, at the
    version released with the locked dagster-postgres (the integrations share one version number)."""
    assert dockerfile_args()["DAGSTER_K8S_VERSION"] == locked_version("dagster-postgres")
    assert re.search(r'-c requirements\.lock\s+"dagster-k8s==\$\{DAGSTER_K8S_VERSION\}"', dockerfile_runs())


def test_the_code_version_comes_from_a_build_argument() -> None:
    """No .git in the image (.dockerignore): the audit's code version is the build argument, in the environment."""
    assert "MLPLATFORM_CODE_VERSION" in dockerfile_args(), "an ARG before FROM is not visible after it"
    assert dockerfile_env()["MLPLATFORM_CODE_VERSION"] == "${MLPLATFORM_CODE_VERSION}"
    assert dockerignored(".git")


def test_the_default_command_serves_and_every_workload_runs_as_the_images_user() -> None:
    params = parse_command(dockerfile_cmd())
    assert (params["_command"], params["host"]) == (["mlplatform", "serve"], "0.0.0.0")
    uid = int(dockerfile_user())
    assert uid != 0 and f"useradd --uid {uid}" in dockerfile_runs()
    contexts = {workload: pod["securityContext"] for workload, pod in pod_specs()}
    values = helm_values()
    contexts.update({
        "webserver": values["dagsterWebserver"]["podSecurityContext"],
        "daemon": values["dagsterDaemon"]["podSecurityContext"],
        "code server": values["dagster-user-deployments"]["deployments"][0]["podSecurityContext"],
        "run pods": values["runLauncher"]["config"]["k8sRunLauncher"]["securityContext"]})
    for workload, context in contexts.items():
        assert context.get("runAsNonRoot") is True and context.get("runAsUser") == uid, workload


def test_one_image_everywhere() -> None:
    images = {workload: spec["image"] for workload, pod in pod_specs() for spec in pod["containers"]}
    values = helm_values()
    for role, image in [("webserver", values["dagsterWebserver"]["image"]),
                        ("daemon", values["dagsterDaemon"]["image"]),
                        ("code server", values["dagster-user-deployments"]["deployments"][0]["image"])]:
        images[role] = f"{image['repository']}:{image['tag']}"
    assert len(set(images.values())) == 1, images


def test_the_build_context_leaves_out_state_and_keeps_what_the_build_needs() -> None:
    for ignored in [".git", ".venv", ".mlplatform", "dbt_project/target/manifest.json", "mlplatform/__pycache__/x.pyc"]:
        assert dockerignored(ignored), ignored
    copied = [rest.split()[0] for keyword, rest in dockerfile_instructions() if keyword == "COPY"
              and rest.split()[0] != "."]
    for needed in [*copied, "setup.py", "README.md", "requirements.lock", "mlplatform/cli.py",
                   "mlplatform/examples/car_loan.yaml", "dbt_project/dbt_project.yml", "pyproject.toml"]:
        assert not dockerignored(needed), needed
        assert (ROOT / needed).exists(), needed


def test_home_and_dbt_logs_are_writable_places() -> None:
    """The runtime user writes under MLPLATFORM_HOME (a volume in every pod); dbt's logs go there, not into the
    read-only code."""
    env = dockerfile_env()
    assert env["DBT_LOG_PATH"].startswith(env["MLPLATFORM_HOME"] + "/")
    code_location = helm_values()["dagster-user-deployments"]["deployments"][0]
    assert {m["mountPath"] for m in code_location["volumeMounts"]} == {code_location["env"]["MLPLATFORM_HOME"]}
    assert code_location["env"]["MLPLATFORM_HOME"] == env["MLPLATFORM_HOME"]
    claim = code_location["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert resource("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"], \
        "each run is its own pod, maybe on another node"


# ==================================================================================================================
# the services stage: the MLflow manifest's own commands on real PostgreSQL and S3
# ==================================================================================================================


def kubernetes_expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """$(NAME) replaced from the container's environment, as the kubelet does."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in argv]


def on_loopback(argv: list[str], port: int) -> list[str]:
    """The same command, bound to loopback on a free port (the only change the test makes)."""
    from mlplatform_tests.services import VENV_BIN

    argv = [str(VENV_BIN / argv[0]), *argv[1:]]
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        argv[argv.index(flag) + 1] = value
    return argv


@pytest.mark.services
def test_the_mlflow_manifests_commands_run_on_postgresql_and_s3(postgres_server, s3_server, tmp_path: Path) -> None:
    """The migration Job's command creates the tables in an empty database and is a no-op the second time; the
    server's command (only host and port changed) stores runs in PostgreSQL, writes artifacts through its proxy
    into the manifest's bucket, and answers the in-cluster Host header while refusing others."""
    import httpx

    from mlplatform_tests.services import VENV_BIN, free_port, spawn, stop_process, wait_for

    postgres_server.create_database("mlflow_k8s_manifest")
    store = postgres_server.url("mlflow_k8s_manifest", driver="postgresql+psycopg2")
    secret_env = {"MLFLOW_BACKEND_STORE_URI": store}  # what the Secret mlflow-db gives the pod
    job = resource("Job", f"mlflow-db-upgrade-{locked_version('mlflow').replace('.', '-')}")
    upgrade = kubernetes_expand(job["spec"]["template"]["spec"]["containers"][0]["command"], secret_env)
    upgrade = [str(VENV_BIN / upgrade[0]), *upgrade[1:]]
    for attempt in ("empty database", "already current"):
        done = subprocess.run(upgrade, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{attempt}: {done.stderr[-2000:]}"
    assert postgres_server.psql("select count(*) from alembic_version", database="mlflow_k8s_manifest").strip() == "1"

    server = container("Deployment", "mlflow")
    command = kubernetes_expand(server["command"], secret_env)
    destination = parse_command(server["command"])["artifacts_destination"]
    bucket = urlsplit(destination).netloc
    s3_server.create_bucket(bucket)
    port = free_port()
    log = tmp_path / "mlflow.log"
    process = spawn(on_loopback(command, port), log, {**os.environ, **secret_env, **s3_server.client_env()}, tmp_path)
    base = f"http://127.0.0.1:{port}"
    in_cluster = {"Host": f"{resource('Service', 'mlflow')['metadata']['name']}:5000"}
    try:
        wait_for(lambda: http_ok_with(base + "/health", {"Host": "10.0.0.7:5000"}), 120, "mlflow server", process, log)
        with httpx.Client(base_url=base, timeout=30) as client:
            created = client.post("/api/2.0/mlflow/experiments/create", json={"name": "k8s-manifest"},
                                  headers=in_cluster)
            assert created.status_code == 200, created.text
            experiment_id = created.json()["experiment_id"]
            experiment = client.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment_id},
                                    headers=in_cluster).json()["experiment"]
            assert experiment["artifact_location"].startswith("mlflow-artifacts:"), "artifacts must be proxied"
            put = client.put(f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/check/note.txt",
                             content=b"through the proxy", headers=in_cluster)
            assert put.status_code == 200, put.text
            refused = client.post("/api/2.0/mlflow/experiments/create", json={"name": "x"},
                                  headers={"Host": "attacker.example:5000"})
            assert refused.status_code == 403
        prefix = urlsplit(destination).path.strip("/")
        assert f"{prefix}/{experiment_id}/check/note.txt" in s3_server.keys(bucket)
        assert postgres_server.psql("select name from experiments where experiment_id = "
                                    f"{int(experiment_id)}", database="mlflow_k8s_manifest").strip() == "k8s-manifest"
    finally:
        stop_process(process)


def http_ok_with(url: str, headers: dict[str, str]) -> bool:
    import httpx

    return httpx.get(url, headers=headers, timeout=2).status_code == 200
