"""The FastAPI application: predict, MLflow-compatible invocations, model listing, health, readiness, metrics.

Handlers read the raw body and check records with :class:`RecordSchema` instead of declaring pydantic bodies: the
1-row path is the one the benchmark measures, and every bad input must become a 4xx that names the problem.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import queue
import re
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

from mlplatform.lib.prediction_log import ChildProcessLogWriter, PredictionLogWriter, utc_now
from mlplatform.lib.routing import CANARY_ROLE, CHAMPION_ROLE, SHADOW_ROLE, entity_key, role_for, routing_key
from mlplatform.serving.batching import MicroBatcher, single_threaded
from mlplatform.serving.explain import add_explain_route
from mlplatform.serving.metrics import ServingMetrics
from mlplatform.serving.models import LoadedModel, ModelState, ModelWatcher, Registry, ServingState
from mlplatform.serving.schema import RecordProblems, RecordSchema
from mlplatform.specs import ModelSpec

log = logging.getLogger("mlplatform.serving")

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNKNOWN_MODEL_LABEL = "(unknown)"
"""Metric label for requests naming no served model: a client's typos must not create label sets."""


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
    shadow_queue_rows: int = 10_000
    max_body_bytes: int | None = None  # default: 4 KiB a record of max_batch, plus 64 KiB

    @property
    def body_limit(self) -> int:
        return self.max_body_bytes or self.max_batch * 4096 + 65536


class HttpProblem(Exception):
    """A 4xx/503 answer with a reason."""

    def __init__(self, status: int, error: str, **detail: Any):
        self.status = status
        self.body = {"error": error, **detail}
        super().__init__(error)


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
            elapsed = time.perf_counter() - started
            with self._lock:
                self._pending_rows -= len(rows)
            if outputs is None:
                continue
            self.scored += len(rows)
            self.metrics.predictions.labels(model.name, model.version, SHADOW_ROLE).inc(len(rows))
            self.metrics.latency.labels(model.name, model.version, SHADOW_ROLE).observe(elapsed)
            if self.writer is not None:
                for log_row, output in zip(log_rows, outputs, strict=True):
                    log_row.update(version=model.version, role=SHADOW_ROLE, score=output["score"],
                                   label=_label(output), probabilities=output.get("probabilities"),
                                   latency_ms=elapsed * 1000)
                self.writer.write(log_rows)


class ServingRuntime:
    """Everything the handlers share: the model watcher, the batcher, the log writer, the shadow scorer, metrics."""

    def __init__(self, config: ServingConfig):
        self.config = config
        input_types = {spec.name: {**{c: "float64" for c in spec.features.numeric},
                                   **{c: "string" for c in spec.features.categorical}} for spec in config.specs}
        # The log's Parquet work runs in a child process, off this process's GIL (docs/serving.md, Speed).
        self.writer = (ChildProcessLogWriter(config.home, config.flush_seconds, input_types)
                       if config.log_predictions else None)
        self.metrics = ServingMetrics(lambda: self.writer.backlog if self.writer else 0,
                                      lambda: self.writer.written_rows if self.writer else 0)
        self.watcher = ModelWatcher(config.specs, Registry(config.tracker), config.poll_seconds,
                                    on_swap=self._served_gauge)
        self.batcher = MicroBatcher(max_rows=max(config.max_batch, 1))
        self.shadow = ShadowScorer(self.writer, self.metrics, config.shadow_queue_rows)

    @property
    def state(self) -> ServingState:
        return self.watcher.state

    async def start(self) -> None:
        if self.writer is not None:
            self.writer.start()
        self.batcher.start()
        self.shadow.start()
        self.watcher.start()

    async def stop(self) -> None:
        """On shutdown (SIGTERM): finish queued predictions and shadows, then flush the log."""
        await self.batcher.stop()
        await asyncio.to_thread(self.shadow.stop)
        await asyncio.to_thread(self.watcher.stop)
        gc.unfreeze()  # let the collector see everything again (the watcher froze the long-lived objects)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
            log.info("prediction log: %d rows in %d segments", self.writer.written_rows, self.writer.segments)

    def _served_gauge(self, state: ServingState) -> None:
        self.metrics.served.clear()
        for name, model in state.models.items():
            for role, loaded in (("champion", model.champion), ("challenger", model.challenger)):
                if loaded is not None:
                    self.metrics.served.labels(name, role, loaded.version).set(1)

    async def score(self, model: ModelState, records: list[Any], request_id: str, arrived: float,
                    route: str) -> list[dict[str, Any]]:
        """Check, route, score and log records; one answer per record, in order."""
        when = utc_now()
        if model.champion is None:
            raise HttpProblem(503, f"model {model.spec.name!r} has no servable champion yet", model=model.spec.name,
                              refused_versions=dict(model.refused))
        try:
            rows = model.schema.check(records)
        except RecordProblems as problems:
            raise HttpProblem(422, "invalid records", problems=problems.problems) from None
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
        if len(groups) == 1:  # the usual case: no gather (its future and callbacks were ~2 % of a 1-row request)
            results = [await self.batcher.predict(groups[0][0], rows if len(groups[0][2]) == len(rows)
                                                  else [rows[i] for i in groups[0][2]])]
        else:
            results = await asyncio.gather(*(self.batcher.predict(m, [rows[i] for i in idx])
                                             for m, _, idx in groups))
        latency = time.perf_counter() - arrived
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
            if self.writer is not None:
                self.writer.write(log_rows)
            if model.shadow and challenger is not None and champion_indexes:
                self.shadow.submit(challenger, [rows[i] for i in champion_indexes],
                                   [dict(log_rows[i]) for i in champion_indexes])
        return answers


def _public(output: Mapping[str, Any]) -> dict[str, Any]:
    """What a client sees of an output: the prediction and the probabilities, not the log's score."""
    return {k: v for k, v in output.items() if k != "score"}


def _label(output: Mapping[str, Any]) -> str:
    return str(output["prediction"])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HttpProblem(400, "malformed JSON", detail=str(error)[:300]) from None


def predict_records(payload: Any) -> list[Any]:
    """``{"records": [record, ...]}``: the one shape of the predict route."""
    if not isinstance(payload, dict) or "records" not in payload:
        raise HttpProblem(422, "expected a JSON object {\"records\": [record, ...]}",
                          found=type(payload).__name__ if not isinstance(payload, dict) else sorted(payload)[:20])
    records = payload["records"]
    if not isinstance(records, list) or not records:
        raise HttpProblem(422, "\"records\" must be a non-empty list of records",
                          found=type(records).__name__ if not isinstance(records, list) else "an empty list")
    return records


def mlflow_records(payload: Any) -> list[Any]:
    """Records of an MLflow scoring payload: ``dataframe_records`` or ``dataframe_split`` (as `mlflow models serve`)."""
    if not isinstance(payload, dict):
        raise HttpProblem(422, "expected a JSON object with dataframe_records or dataframe_split",
                          found=type(payload).__name__)
    if "dataframe_records" in payload:
        records = payload["dataframe_records"]
        if not isinstance(records, list) or not records:
            raise HttpProblem(422, "dataframe_records must be a non-empty list of records")
        return records
    if "dataframe_split" in payload:
        split = payload["dataframe_split"]
        if not isinstance(split, dict) or not isinstance(split.get("columns"), list) \
                or not isinstance(split.get("data"), list) or not split["data"]:
            raise HttpProblem(422, "dataframe_split must be {\"columns\": [...], \"data\": [[...], ...]} "
                              "with at least one row")
        columns = split["columns"]
        if not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
            raise HttpProblem(422, "dataframe_split.columns must be distinct texts")
        records = []
        for index, row in enumerate(split["data"]):
            if not isinstance(row, list) or len(row) != len(columns):
                raise HttpProblem(422, f"dataframe_split.data[{index}] must be a list of {len(columns)} values "
                                  "(one per column)")
            records.append(dict(zip(columns, row, strict=True)))
        return records
    supported = "dataframe_records, dataframe_split"
    found = sorted(payload)[:20]
    raise HttpProblem(422, f"unsupported MLflow payload: this service accepts {supported}", found=found)


_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A random per-process prefix and a counter: unique across processes and restarts, and cheaper than a uuid4
    per request (its system call showed as ~5 % of the event loop's samples at 1-row requests)."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER)}"


def checked_request_id(given: str | None) -> str:
    if given is None:
        return new_request_id()
    if not REQUEST_ID_PATTERN.match(given):
        raise HttpProblem(422, f"{REQUEST_ID_HEADER} must be 1-128 characters of letters, digits and . _ : -")
    return given


async def score_request(runtime: ServingRuntime, name: str, route: str, body: bytes, given_request_id: str | None,
                        oversized: bool = False) -> tuple[int, bytes, dict[str, str]]:
    """One scoring request, whatever serves it (the ASGI fast path or FastAPI): (status, JSON body, headers).

    Every outcome is counted; input problems are 4xx with a reason; anything else is a 500 with an error id.
    """
    arrived = time.perf_counter()
    config = runtime.config
    model = runtime.state.models.get(name)
    label = name if model is not None else UNKNOWN_MODEL_LABEL
    status = 500
    try:
        if model is None:
            raise HttpProblem(404, f"no model named {name!r} is served", served=sorted(runtime.state.models))
        request_id = checked_request_id(given_request_id)
        if oversized or len(body) > config.body_limit:
            raise HttpProblem(413, f"request body above {config.body_limit} bytes")
        payload = parse_json(body)
        records = predict_records(payload) if route == "predict" else mlflow_records(payload)
        if len(records) > config.max_batch:
            raise HttpProblem(413, f"{len(records)} records in one request; at most {config.max_batch}",
                              max_batch=config.max_batch)
        answers = await runtime.score(model, records, request_id, arrived, route)
        status = 200
        if route == "predict":
            answer: Any = {"request_id": request_id, "model": name, "predictions": answers}
        else:
            answer = {"predictions": [a["prediction"] for a in answers]}
        return 200, _dumps(answer), {REQUEST_ID_HEADER: request_id}
    except HttpProblem as problem:
        status = problem.status
        return problem.status, _dumps(problem.body), {}
    except Exception:  # noqa: BLE001 - a genuine server fault: answer with an id to find the traceback by
        error_id = uuid.uuid4().hex
        log.exception("error %s on POST /v1/models/%s/%s", error_id, name, route)
        return 500, _dumps({"error": "internal error", "error_id": error_id}), {}
    finally:
        runtime.metrics.requests.labels(label, route, str(status)).inc()
        if status >= 400:
            runtime.metrics.errors.labels(label, route, str(status)).inc()


SCORING_PATH = re.compile(r"^/v1/models/([^/]+)/(predict|invocations)$")


class ScoringFastPath:
    """A bare ASGI handler for the two scoring routes, in front of the FastAPI application.

    FastAPI's middleware stack, routing and dependency handling were ~11 % of the event loop's time on a 1-row
    request; these two routes need none of it (they read raw bytes and answer raw bytes through the same
    :func:`score_request`). Everything else (and the OpenAPI document, which still lists both routes) is FastAPI's.
    """

    def __init__(self, app: FastAPI, runtime: ServingRuntime):
        self.app = app
        self.runtime = runtime
        self.state = app.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        match = SCORING_PATH.match(scope["path"])
        if match is None:
            return await self.app(scope, receive, send)
        chunks, size, limit = [], 0, self.runtime.config.body_limit
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:  # beyond the limit keep reading (and drop) so the 413 can be answered
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        status, payload, headers = await score_request(self.runtime, match.group(1), match.group(2),
                                                       b"".join(chunks), given, oversized=size > limit)
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})
        return None


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_dumps(body), status_code=status, media_type="application/json", headers=dict(headers or {}))


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


def create_app(config: ServingConfig) -> ScoringFastPath:
    """The FastAPI application behind :class:`ScoringFastPath` (``.app`` is the FastAPI object)."""
    runtime = ServingRuntime(config)

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
    add_explain_route(app, runtime)  # POST /v1/models/{name}/explain (serving/explain.py)

    async def handle(name: str, request: Request, route: str) -> Response:
        status, body, headers = await score_request(runtime, name, route, await request.body(),
                                                    request.headers.get(REQUEST_ID_HEADER))
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    @app.post("/v1/models/{name}/predict", summary="Predict one or more records",
              openapi_extra=_request_body_doc(config.specs, mlflow=False))
    async def predict(name: str, request: Request) -> Response:
        """Body: `{"records": [record, ...]}`. Answer per record: prediction (+ probabilities), version, role
        (`champion`/`canary`), request id, the entity key when given. 422 names every bad field."""
        return await handle(name, request, "predict")

    @app.post("/v1/models/{name}/invocations", summary="MLflow scoring protocol",
              openapi_extra=_request_body_doc(config.specs, mlflow=True))
    async def invocations(name: str, request: Request) -> Response:
        """`dataframe_records` or `dataframe_split`, answered like `mlflow models serve`: `{"predictions": [...]}`."""
        return await handle(name, request, "invocations")

    @app.get("/v1/models", summary="Served models, versions, rollout and feature schema")
    async def models() -> Response:
        return _json({"models": [describe(m, config) for m in runtime.state.models.values()]})

    @app.get("/v1/models/{name}", summary="One served model")
    async def model(name: str) -> Response:
        found = runtime.state.models.get(name)
        if found is None:
            return _json({"error": f"no model named {name!r} is served", "served": sorted(runtime.state.models)},
                         404)
        return _json(describe(found, config))

    @app.get("/health", summary="The process answers")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get("/ready", summary="Every model to serve has a champion loaded (503 otherwise)")
    async def ready() -> Response:
        state = runtime.state
        missing = sorted(n for n, m in state.models.items() if m.champion is None)
        body = {"ready": not missing, "missing": missing,
                "models": {n: m.champion.version for n, m in state.models.items() if m.champion}}
        return _json(body, 200 if not missing else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex
        log.error("error %s on %s %s", error_id, request.method, request.url.path, exc_info=error)
        return JSONResponse({"error": "internal error", "error_id": error_id}, status_code=500)

    return ScoringFastPath(app, runtime)


def describe(model: ModelState, config: ServingConfig) -> dict[str, Any]:
    """A model as GET /v1/models shows it."""
    spec = model.spec
    challenger = model.rollout_challenger
    mode = [m for m, on in (("canary", model.canary_percent > 0), ("shadow", model.shadow)) if on]
    return {
        "name": spec.name,
        "task": spec.task,
        "champion": {"version": model.champion.version} if model.champion else None,
        "challenger": {"version": model.challenger.version} if model.challenger else None,
        "aliases": dict(model.aliases),
        "refused_versions": dict(model.refused),
        "rollout": {"canary_percent": spec.rollout.canary_percent, "shadow": spec.rollout.shadow,
                    "active": "+".join(mode) or "none",
                    "challenger_version": challenger.version if challenger else None},
        "key": list(spec.source.key),
        "features": model.schema.json_schema(),
        "classes": list(model.champion.classes) if model.champion and model.champion.classes else None,
        "max_batch": config.max_batch,
        "registry_error": model.registry_error,
        "checked_at": model.checked_at,
    }
