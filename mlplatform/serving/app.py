"""The FastAPI application: predict, MLflow-compatible invocations, model listing, health, readiness, metrics.

The scoring routes (predict, invocations, explain) reach their handlers through :mod:`mlplatform.serving.protocol`,
which reads the raw body and checks records with :class:`RecordSchema` instead of declaring pydantic bodies: the
1-row path is the one the benchmark measures, and every bad input must become a 4xx that names the problem.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlplatform.lib.api_tokens import ApiTokens, bearer_token
from mlplatform.lib.prediction_log import SENSITIVE_PREFIX, ChildProcessLogWriter, PredictionLogWriter, utc_now
from mlplatform.lib.routing import CANARY_ROLE, CHAMPION_ROLE, SHADOW_ROLE, entity_key, role_for, routing_key
from mlplatform.serving.batching import MicroBatcher, single_threaded
from mlplatform.serving.explain import add_explain_route, explain_route
from mlplatform.serving.metrics import RecentLatencies, ServingMetrics
from mlplatform.serving.models import LoadedModel, ModelState, ModelWatcher, Registry, ServingState, finite_output
from mlplatform.serving.protocol import (
    AUTH_REALM,
    REQUEST_ID_HEADER,
    Body,
    BodyDeadlines,
    Route,
    ScoringCall,
    ScoringFront,
    dumps,
    handle,
    mlflow_records,
    not_finite,
    predict_records,
)
from mlplatform.serving.schema import RecordSchema
from mlplatform.specs import ModelSpec

log = logging.getLogger("mlplatform.serving")

BODY_TIMEOUT_SECONDS = 30.0
"""Default time a scoring request's body has to arrive in full (then 408 and the connection is closed)."""


@dataclass
class ServingConfig:
    """What the service serves and how (``mlplatform serve`` fills it from the command line and the settings)."""

    home: Path
    specs: Sequence[ModelSpec]
    tracker: Any
    poll_seconds: float = 2.0
    flush_seconds: float = 1.0
    max_batch: int = 1000
    log_predictions: bool = True
    log_uri: str | None = None  # s3://bucket/prefix: spool under home, upload each segment (docs/serving.md)
    replica: str | None = None  # this replica's name in the log's object keys (default: the host name)
    shadow_queue_rows: int = 10_000
    max_body_bytes: int | None = None  # default: 4 KiB a record of max_batch, plus 64 KiB
    body_timeout_seconds: float = BODY_TIMEOUT_SECONDS
    api_tokens: ApiTokens | None = None  # bearer tokens per team (MLPLATFORM_API_TOKENS_FILE); None: the API is open

    @property
    def body_limit(self) -> int:
        return self.max_body_bytes or self.max_batch * 4096 + 65536


class ShadowScorer:
    """Scores the challenger on copies of answered records, on its own thread, after the response went out.

    The queue is bounded by records: when the challenger cannot keep up, shadow records are dropped (and counted)
    rather than slowing the champion's answers or growing memory without end.
    """

    def __init__(self, writer: PredictionLogWriter | None, metrics: ServingMetrics, max_rows: int):
        self.writer = writer
        self.metrics = metrics
        self.max_rows = max_rows
        self._queue: queue.Queue = queue.Queue()
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self.scored = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, model: LoadedModel, rows: list[dict[str, Any]], log_rows: list[dict[str, Any]]) -> None:
        with self._lock:
            if self._pending_rows + len(rows) > self.max_rows:
                self.metrics.shadow_dropped.labels(model.name).inc(len(rows))
                return
            self._pending_rows += len(rows)
        self._queue.put((model, rows, log_rows))

    def stop(self) -> None:
        """Score what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        single_threaded()
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < 256:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._score(batch)
                    return
                batch.append(more)
            self._score(batch)

    def _score(self, batch: list[tuple[LoadedModel, list[dict[str, Any]], list[dict[str, Any]]]]) -> None:
        groups: dict[int, list[int]] = {}
        for index, (model, _, _) in enumerate(batch):
            groups.setdefault(id(model), []).append(index)
        for indexes in groups.values():
            model = batch[indexes[0]][0]
            rows = [row for i in indexes for row in batch[i][1]]
            log_rows = [row for i in indexes for row in batch[i][2]]
            started = time.perf_counter()
            try:
                outputs = model.predict(rows)
            except Exception:  # noqa: BLE001 - a failing shadow must never affect anything else
                log.exception("shadow %s v%s: scoring %d records failed", model.name, model.version, len(rows))
                outputs = None
                if self.writer is not None:  # error rows: the shadow's error rate (lib/rollout_analysis.py)
                    self.writer.write([{**row, "version": model.version, "role": SHADOW_ROLE, "score": None,
                                        "label": None, "probabilities": None, "status": 500,
                                        "latency_ms": (time.perf_counter() - started) * 1000} for row in log_rows])
            elapsed = time.perf_counter() - started
            with self._lock:
                self._pending_rows -= len(rows)
            if outputs is None:
                continue
            self.scored += len(rows)
            self.metrics.predictions.labels(model.name, model.version, SHADOW_ROLE).inc(len(rows))
            self.metrics.latency.labels(model.name, model.version, SHADOW_ROLE).observe(elapsed)
            if self.writer is not None:
                kept = []
                for log_row, output in zip(log_rows, outputs, strict=True):
                    if not finite_output(output):  # nothing non-finite reaches the log (drift, live performance)
                        self.metrics.shadow_dropped.labels(model.name).inc()
                        continue
                    log_row.update(version=model.version, role=SHADOW_ROLE, score=output["score"],
                                   label=_label(output), probabilities=output.get("probabilities"),
                                   latency_ms=elapsed * 1000)
                    kept.append(log_row)
                if len(kept) < len(log_rows):
                    log.warning("shadow %s v%s: %d predictions were not finite; not logged", model.name,
                                model.version, len(log_rows) - len(kept))
                self.writer.write(kept)


class ServingRuntime:
    """Everything the handlers share: the model watcher, the batcher, the log writer, the shadow scorer, metrics."""

    def __init__(self, config: ServingConfig):
        self.config = config
        input_types = {spec.name: {**{c: "float64" for c in spec.features.numeric},
                                   **{c: "string" for c in [*spec.features.categorical, *spec.features.text]},
                                   **{SENSITIVE_PREFIX + c: "string" for c in sensitive_columns(spec)}}
                       for spec in config.specs}
        # The log's Parquet work runs in a child process, off this process's GIL (docs/serving.md, Speed).
        self.writer = (ChildProcessLogWriter(config.home, config.flush_seconds, input_types, config.log_uri,
                                             config.replica) if config.log_predictions else None)
        self.metrics = ServingMetrics(lambda: self.writer.backlog if self.writer else 0,
                                      lambda: self.writer.written_rows if self.writer else 0,
                                      lambda: self.writer.spooled_segments if self.writer else 0)
        self.metrics.watch_budgets({spec.name: latency_budget_ms(spec) for spec in config.specs})
        self.watcher = ModelWatcher(config.specs, Registry(config.tracker), config.poll_seconds,
                                    on_swap=self._served_gauge)
        self.batcher = MicroBatcher(max_rows=max(config.max_batch, 1))
        self.shadow = ShadowScorer(self.writer, self.metrics, config.shadow_queue_rows)
        self.body_deadlines = BodyDeadlines(config.body_timeout_seconds)
        # Set on SIGTERM with a drain period (serving.server): /ready answers 503 so a balancer takes this replica
        # out, while requests already routed here are still answered, each closing its connection.
        self.draining = False

    @property
    def state(self) -> ServingState:
        return self.watcher.state

    async def start(self) -> None:
        if self.writer is not None:
            self.writer.start()
        self.batcher.start()
        self.body_deadlines.start()
        self.shadow.start()
        self.watcher.start()

    async def stop(self) -> None:
        """On shutdown (SIGTERM): finish queued predictions and shadows, then flush the log."""
        await self.batcher.stop()
        await self.body_deadlines.stop()
        await asyncio.to_thread(self.shadow.stop)
        await asyncio.to_thread(self.watcher.stop)
        gc.unfreeze()  # let the collector see everything again (the watcher froze the long-lived objects)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
            log.info("prediction log: %d rows in %d segments", self.writer.written_rows, self.writer.segments)

    def _log_errors(self, call: ScoringCall, when: Any, groups: Sequence[tuple[LoadedModel, str, list[int]]],
                    status: int, entities: Sequence[str | None], record_ids: Sequence[str | None]) -> None:
        """Log the records of the groups that failed as error rows (then the request answers its error)."""
        if self.writer is not None and groups:
            self.writer.write(_error_rows(call, when, groups, status, entities, record_ids))

    def _served_gauge(self, state: ServingState) -> None:
        self.metrics.served.clear()
        for name, model in state.models.items():
            for role, loaded in (("champion", model.champion), ("challenger", model.challenger)):
                if loaded is not None:
                    self.metrics.served.labels(name, role, loaded.version).set(1)

    async def score(self, call: ScoringCall) -> list[dict[str, Any]]:
        """Route, score and log checked records; one answer per record, in order (a 422 when any is not finite)."""
        when = utc_now()
        model, records, rows, request_id = call.model, call.records, call.rows, call.request_id
        assert model.champion is not None  # protocol.handle answered 503 otherwise
        challenger = model.rollout_challenger
        percent = model.canary_percent
        keys: list[dict[str, Any] | None] = []
        entities: list[str | None] = []
        record_ids: list[str | None] = []
        roles: list[str] = []
        key_columns = model.schema.key_columns
        for index, record in enumerate(records):
            key, record_id = model.schema.extras(record)
            entity = entity_key(record, key_columns)
            keys.append(key)
            entities.append(entity)
            record_ids.append(record_id)
            roles.append(role_for(routing_key(entity, record_id, request_id, index), percent) if percent > 0
                          else CHAMPION_ROLE)
        champion_indexes = [i for i, r in enumerate(roles) if r == CHAMPION_ROLE]
        canary_indexes = [i for i, r in enumerate(roles) if r == CANARY_ROLE]
        groups = [(model.champion, CHAMPION_ROLE, champion_indexes)]
        if canary_indexes and challenger is not None:
            groups.append((challenger, CANARY_ROLE, canary_indexes))
        groups = [g for g in groups if g[2]]
        try:
            if len(groups) == 1:  # the usual case: no gather (its future and callbacks were ~2 % of a 1-row request)
                results = [await self.batcher.predict(groups[0][0], rows if len(groups[0][2]) == len(rows)
                                                      else [rows[i] for i in groups[0][2]])]
            else:
                results = await asyncio.gather(*(self.batcher.predict(m, [rows[i] for i in idx])
                                                 for m, _, idx in groups), return_exceptions=True)
                failure = next((r for r in results if isinstance(r, BaseException)), None)
                if failure is not None:
                    self._log_errors(call, when, [g for g, r in zip(groups, results, strict=True)
                                                  if isinstance(r, BaseException)], 500, entities, record_ids)
                    raise failure
        except Exception:
            if len(groups) == 1:
                self._log_errors(call, when, groups, 500, entities, record_ids)
            raise
        overflowed = [i for (_, _, indexes), outputs in zip(groups, results, strict=True)
                      for i, output in zip(indexes, outputs, strict=True) if not finite_output(output)]
        if overflowed:  # nothing is answered or logged: a non-finite score would reach drift and live performance
            failed = set(overflowed)
            self._log_errors(call, when, [g for g in groups if failed & set(g[2])], 422, entities, record_ids)
            raise not_finite(sorted(overflowed))
        latency = time.perf_counter() - call.arrived
        self.metrics.recent.add(model.spec.name, latency)
        answers: list[dict[str, Any]] = [{}] * len(rows)
        versions: list[str] = [""] * len(rows)
        outputs_by_index: list[dict[str, Any]] = [{}] * len(rows)
        for (loaded, role, indexes), outputs in zip(groups, results, strict=True):
            self.metrics.predictions.labels(loaded.name, loaded.version, role).inc(len(indexes))
            self.metrics.latency.labels(loaded.name, loaded.version, role).observe(latency)
            for i, output in zip(indexes, outputs, strict=True):
                answer = {"index": i, "request_id": request_id, **_public(output), "version": loaded.version,
                          "role": role}
                if keys[i] is not None:
                    answer["key"] = keys[i]
                if record_ids[i] is not None:
                    answer["record_id"] = record_ids[i]
                answers[i] = answer
                versions[i] = loaded.version
                outputs_by_index[i] = output
        if self.writer is not None or model.shadow:
            log_rows = [{"request_id": request_id, "record_index": i, "record_id": record_ids[i], "time": when,
                         "model": model.spec.name, "version": versions[i], "role": roles[i],
                         "entity_key": entities[i], "inputs": rows[i], "score": outputs_by_index[i]["score"],
                         "label": _label(outputs_by_index[i]),
                         "probabilities": outputs_by_index[i].get("probabilities"),
                         "latency_ms": latency * 1000} for i in range(len(rows))]
            if model.schema.sensitive_columns:  # logged beside the inputs for live fairness, never scored
                for log_row, record in zip(log_rows, records, strict=True):
                    log_row["sensitive"] = model.schema.sensitive(record)
            if self.writer is not None:
                self.writer.write(log_rows)
            if model.shadow and challenger is not None and champion_indexes:
                self.shadow.submit(challenger, [rows[i] for i in champion_indexes],
                                   [dict(log_rows[i]) for i in champion_indexes])
        return answers


def _error_rows(call: ScoringCall, when: Any, groups: Sequence[tuple[LoadedModel, str, list[int]]], status: int,
                entities: Sequence[str | None], record_ids: Sequence[str | None]) -> list[dict[str, Any]]:
    """Error rows of the prediction log: the records a version failed to score, with its version, role and status
    (no score), so the rollout analysis can compare error rates by version and role (lib/rollout_analysis.py)."""
    latency_ms = (time.perf_counter() - call.arrived) * 1000
    return [{"request_id": call.request_id, "record_index": i, "record_id": record_ids[i], "time": when,
             "model": call.model.spec.name, "version": loaded.version, "role": role, "entity_key": entities[i],
             "inputs": call.rows[i], "score": None, "label": None, "probabilities": None, "latency_ms": latency_ms,
             "status": status} for loaded, role, indexes in groups for i in indexes]


def _public(output: Mapping[str, Any]) -> dict[str, Any]:
    """What a client sees of an output: the prediction and the probabilities, not the log's score."""
    return {k: v for k, v in output.items() if k != "score"}


def _label(output: Mapping[str, Any]) -> str:
    return str(output["prediction"])


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json", headers=dict(headers or {}))


def _request_body_doc(specs: Sequence[ModelSpec], mlflow: bool) -> dict[str, Any]:
    record = {"oneOf": [RecordSchema(s).json_schema() for s in specs]} if specs else {"type": "object"}
    if mlflow:
        schema = {"type": "object", "properties": {
            "dataframe_records": {"type": "array", "items": record},
            "dataframe_split": {"type": "object", "properties": {
                "columns": {"type": "array", "items": {"type": "string"}},
                "data": {"type": "array", "items": {"type": "array"}}}}}}
    else:
        schema = {"type": "object", "required": ["records"],
                  "properties": {"records": {"type": "array", "minItems": 1, "items": record}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def scoring_routes(runtime: ServingRuntime) -> dict[str, Route]:
    """predict, invocations and explain: what each answers once :func:`mlplatform.serving.protocol.handle` has
    checked the request."""
    config = runtime.config

    async def predict(call: ScoringCall) -> Any:
        return {"request_id": call.request_id, "model": call.model.spec.name,
                "predictions": await runtime.score(call)}

    async def invocations(call: ScoringCall) -> Any:
        return {"predictions": [a["prediction"] for a in await runtime.score(call)]}

    explain = explain_route(config.tracker, runtime.metrics, config.max_batch)
    return {"predict": Route("predict", predict_records, config.max_batch, predict),
            "invocations": Route("invocations", mlflow_records, config.max_batch, invocations),
            explain.name: explain}


def create_app(config: ServingConfig) -> ScoringFront:
    """The FastAPI application behind :class:`ScoringFront` (``.app`` is the FastAPI object)."""
    runtime = ServingRuntime(config)
    routes = scoring_routes(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="mlplatform serving", version="1",
                  description="Every spec'd model's champion, with canary and shadow rollout. Predict with "
                  "`{\"records\": [...]}`; MLflow clients use `/invocations`. See docs/serving.md.",
                  lifespan=lifespan)
    app.state.runtime = runtime

    async def through_fastapi(name: str, request: Request, route: str) -> Response:
        """The same path when the application is called without the front (the front answers these routes)."""
        status, body, headers = await handle(runtime, routes[route], name, Body(await request.body()),
                                             request.headers.get(REQUEST_ID_HEADER), dict(request.query_params),
                                             content_type=request.headers.get("content-type"),
                                             authorization=request.headers.get("authorization"))
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    @app.post("/v1/models/{name}/predict", summary="Predict one or more records",
              openapi_extra=_request_body_doc(config.specs, mlflow=False))
    async def predict(name: str, request: Request) -> Response:
        """Body: `{"records": [record, ...]}`. Answer per record: prediction (+ probabilities), version, role
        (`champion`/`canary`), request id, the entity key when given. 422 names every bad field."""
        return await through_fastapi(name, request, "predict")

    @app.post("/v1/models/{name}/invocations", summary="MLflow scoring protocol",
              openapi_extra=_request_body_doc(config.specs, mlflow=True))
    async def invocations(name: str, request: Request) -> Response:
        """`dataframe_records` or `dataframe_split`, answered like `mlflow models serve`: `{"predictions": [...]}`."""
        return await through_fastapi(name, request, "invocations")

    add_explain_route(app, lambda name, request: through_fastapi(name, request, "explain"))

    @app.get("/v1/models", summary="Served models, versions, rollout and feature schema")
    async def models() -> Response:
        return _json({"models": [describe(m, config, runtime.metrics.recent) for m in runtime.state.models.values()]})

    @app.get("/v1/models/{name}", summary="One served model")
    async def model(name: str) -> Response:
        found = runtime.state.models.get(name)
        if found is None:
            return _json({"error": f"no model named {name!r} is served", "served": sorted(runtime.state.models)},
                         404)
        return _json(describe(found, config, runtime.metrics.recent))

    @app.get("/health", summary="The process answers")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get("/ready", summary="Every model to serve has a champion loaded and the replica is not draining "
             "(503 otherwise)")
    async def ready() -> Response:
        state = runtime.state
        missing = sorted(n for n, m in state.models.items() if m.champion is None)
        ready = not missing and not runtime.draining
        body = {"ready": ready, "missing": missing, "draining": runtime.draining,
                "models": {n: m.champion.version for n, m in state.models.items() if m.champion}}
        return _json(body, 200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics (a metrics token when the tokens file lists any)")
    async def metrics(request: Request) -> Response:
        tokens = config.api_tokens
        if tokens is not None and not tokens.may_read_metrics(bearer_token(request.headers.get("authorization"))):
            return _json({"error": "/metrics needs a metrics token: send Authorization: Bearer <token> with a token "
                          "the tokens file lists under `metrics`"}, 401, {"WWW-Authenticate": AUTH_REALM})
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex
        log.error("error %s on %s %s", error_id, request.method, request.url.path, exc_info=error)
        return JSONResponse({"error": "internal error", "error_id": error_id}, status_code=500)

    return ScoringFront(app, runtime, routes)


def sensitive_columns(spec: ModelSpec) -> list[str]:
    """The spec's sensitive attributes (``fairness.sensitive``), which requests may carry for live fairness."""
    return list(spec.fairness.sensitive) if spec.fairness else []


def latency_budget_ms(spec: ModelSpec) -> float | None:
    """The serving latency budget (p99, ms) of the spec's policy, if it sets one."""
    return getattr(spec.policy_rules, "latency_budget_p99_ms", None)


def latency_report(spec: ModelSpec, recent: RecentLatencies) -> dict[str, Any]:
    """The policy's latency budget beside the measured p99 of the latest requests (None until one was answered)."""
    budget, measured = latency_budget_ms(spec), recent.p99_ms(spec.name)
    return {"budget_p99_ms": budget, "p99_ms": None if measured is None else round(measured, 3),
            "requests": recent.count(spec.name),
            "within_budget": None if budget is None or measured is None else measured <= budget}


def describe(model: ModelState, config: ServingConfig, recent: RecentLatencies) -> dict[str, Any]:
    """A model as GET /v1/models shows it."""
    spec = model.spec
    challenger = model.rollout_challenger
    mode = [m for m, on in (("canary", model.canary_percent > 0), ("shadow", model.shadow)) if on]
    return {
        "name": spec.name,
        "task": spec.task,
        "champion": served_version(model.champion),
        "challenger": served_version(model.challenger),
        "aliases": dict(model.aliases),
        "refused_versions": dict(model.refused),
        "rollout": {"canary_percent": spec.rollout.canary_percent, "canary_share": model.canary_percent,
                    "ramp": list(spec.rollout.ramp), "shadow": spec.rollout.shadow,
                    "min_canary_percent": getattr(spec.policy_rules, "min_canary_percent", None),  # the policy's
                    "active": "+".join(mode) or "none",
                    "challenger_version": challenger.version if challenger else None},
        "key": list(spec.source.key),
        "features": model.schema.json_schema(),
        "classes": list(model.champion.classes) if model.champion and model.champion.classes else None,
        "max_batch": config.max_batch,
        "registry_error": model.registry_error,
        "checked_at": model.checked_at,
        "latency": latency_report(spec, recent),
    }


def served_version(loaded: LoadedModel | None) -> dict[str, Any] | None:
    """A served version as /v1/models shows it: whether a person forced it into production, and who and why."""
    if loaded is None:
        return None
    verdict = loaded.verdict
    if verdict is None or not verdict.forced:
        return {"version": loaded.version, "forced": False}
    return {"version": loaded.version, "forced": True, "forced_by": verdict.forced_by,
            "forced_reason": verdict.forced_reason, "forced_override": verdict.forced_override}
