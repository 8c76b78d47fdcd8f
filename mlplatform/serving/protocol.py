"""The one request path of the scoring routes: predict, invocations (MLflow's protocol) and explain.

Every scoring request goes through :class:`ScoringFront` and :func:`handle`: the body is read within a time limit
(408) and a size limit (413), the model is looked up (404), the request id checked (422), the JSON parsed (400),
the route's payload shape read (422), the record count limited (413), a servable champion required (503) and the
records checked against the spec (422, naming every bad field). Only then does a route's own handler run, on
checked rows. Every outcome is counted in the metrics; anything unexpected is a 500 with an error id to find the
traceback by. The routes themselves (``serving/app.py``, ``serving/explain.py``) say what is done with the rows.

The front is a bare ASGI handler in front of the FastAPI application: FastAPI's middleware, routing and dependency
handling were ~11 % of the event loop's time on a 1-row request, and these routes need none of it (the OpenAPI
document still lists them, and their FastAPI handlers call :func:`handle` too).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl

from mlplatform.lib.api_tokens import ApiTokens, bearer_token, may_score, team_of
from mlplatform.serving.models import ModelState
from mlplatform.serving.schema import RecordProblems

log = logging.getLogger("mlplatform.serving")

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNKNOWN_MODEL_LABEL = "(unknown)"
"""Metric label for requests naming no served model: a client's typos must not create label sets."""

SCORING_PATH = re.compile(r"^/v1/models/([^/]+)/(predict|invocations|explain)$")


class HttpProblem(Exception):
    """A 4xx/503 answer with a reason."""

    def __init__(self, status: int, error: str, headers: Mapping[str, str] | None = None, **detail: Any):
        self.status = status
        self.body = {"error": error, **detail}
        self.headers = dict(headers or {})
        super().__init__(error)


AUTH_REALM = 'Bearer realm="mlplatform"'


def unauthorized(tokens: ApiTokens, authorization: str | None, what: str) -> HttpProblem | None:
    """The 401 for a request to ``what`` whose bearer token is missing or unknown; None when it is known."""
    token = bearer_token(authorization)
    if token is not None and tokens.teams_for(token) is not None:
        return None
    if token is None:
        return HttpProblem(401, f"{what} needs a bearer token: send Authorization: Bearer <token>",
                           headers={"WWW-Authenticate": AUTH_REALM})
    return HttpProblem(401, "the bearer token is not known to this service",
                       headers={"WWW-Authenticate": f'{AUTH_REALM}, error="invalid_token"'})


def check_access(tokens: ApiTokens | None, authorization: str | None, name: str, model: ModelState | None) -> None:
    """Raise the 401 (no or unknown token) or 403 (another team's model) of a scoring request; nothing without
    tokens configured. Runs before the model is looked up, so an unknown client learns no model names."""
    if tokens is None:
        return
    problem = unauthorized(tokens, authorization, "scoring")
    if problem is not None:
        raise problem
    if model is None:
        return  # the 404 that follows names it
    teams = tokens.teams_for(bearer_token(authorization)) or frozenset()
    team = team_of(model.spec)
    if not may_score(teams, team):
        raise HttpProblem(403, f"this token may not score {name!r}: the model belongs to "
                          f"{'team ' + repr(team) if team else 'no team (only a token for every team may)'}, and "
                          f"the token is for {', '.join(sorted(teams))}", model=name, team=team)


def dumps(body: Any) -> bytes:
    """Compact JSON. ``allow_nan=False``: Infinity and NaN are not JSON; a route that lets one through is a bug
    (a 500 with an error id), never an answer standard parsers reject."""
    return json.dumps(body, separators=(",", ":"), default=str, allow_nan=False).encode()


def not_finite(indexes: Sequence[int], what: str = "prediction") -> HttpProblem:
    """The 422 for records whose model output overflowed (inputs far outside what the model was trained on)."""
    return HttpProblem(422, f"the {what} is not finite", problems=[
        {"record": i, "field": None, "message": f"record {i}: the {what} is not finite (the model's output "
         "overflowed: an input is far outside the values it was trained on; bound it with min/max in the spec)"}
        for i in indexes[:50]])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HttpProblem(400, "malformed JSON", detail=str(error)[:300]) from None


def predict_records(payload: Any) -> list[Any]:
    """``{"records": [record, ...]}``: the shape of the predict and explain routes."""
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


class Body(NamedTuple):
    """A request body as read: the bytes kept (up to the limit), whether it was larger, whether it came in time.
    (A tuple: a frozen dataclass cost ~2 us to build, on every request.)"""

    data: bytes
    oversized: bool = False
    timed_out: bool = False


class BodyDeadlines:
    """Reads request bodies within a deadline: ``timeout`` seconds from the first read for the whole body (not per
    chunk: a client sending a byte a second must not hold a connection for ever).

    One sweeping task cancels the reads past their deadline, instead of a timer per request: ``asyncio.timeout``
    around the read cost ~14 us a request (a 1-row request is ~500 us of CPU), registering here ~1 us. A read is
    cancelled at most ``timeout / 4`` (at most 1 s) after its deadline.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._reading: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="body-deadlines")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass

    async def read(self, receive: Callable[[], Awaitable[dict]], limit: int) -> Body | None:
        """The whole body, or a :class:`Body` with ``timed_out``; None when the client disconnected.

        Beyond ``limit`` bytes the rest is read and dropped, so the 413 can be answered."""
        task = asyncio.current_task()
        assert task is not None
        self._reading[task] = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= limit:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            task.uncancel()
            return Body(b"", oversized=size > limit, timed_out=True)
        finally:
            del self._reading[task]
        return Body(chunks[0] if len(chunks) == 1 else b"".join(chunks), oversized=size > limit)

    async def _sweep(self) -> None:
        interval = min(1.0, max(self.timeout / 4, 0.01))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for task, deadline in list(self._reading.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()


@dataclass
class ScoringCall:
    """A request that passed every common check: what a route's handler works on."""

    model: ModelState
    records: list[Any]
    rows: list[dict[str, Any]]  # the records as model inputs (RecordSchema.check)
    request_id: str
    arrived: float  # time.perf_counter() when the body was read
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """One scoring route: how its payload holds records, how many it takes, and what it answers."""

    name: str
    records: Callable[[Any], list[Any]]
    max_records: int
    answer: Callable[[ScoringCall], Awaitable[Any]]  # the JSON answer of a 200


class ServingLimits(Protocol):
    body_limit: int
    body_timeout_seconds: float
    api_tokens: ApiTokens | None


class ServingRuntimeLike(Protocol):
    """What the protocol needs of the service (``serving.app.ServingRuntime``)."""

    @property
    def config(self) -> ServingLimits: ...

    @property
    def body_deadlines(self) -> BodyDeadlines: ...

    @property
    def state(self) -> Any: ...  # ServingState: .models

    @property
    def metrics(self) -> Any: ...  # ServingMetrics: .requests, .errors

    @property
    def draining(self) -> bool: ...  # stopping: answer, then close the connection


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/<something>+json``, parameters (charset) ignored.

    Why: a web page can POST ``text/plain``, a form or a typeless body to any address without a CORS preflight, so
    a page an operator opens could otherwise write rows into the prediction log (which feeds drift and the
    training-data gate); a JSON media type cannot be sent cross-origin without the preflight this service never
    grants. A request without a content type is refused for the same reason."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def handle(runtime: ServingRuntimeLike, route: Route, name: str, body: Body, given_request_id: str | None,
                 query: Mapping[str, str] | None = None, *,
                 content_type: str | None, authorization: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    """One scoring request through the common checks, then ``route.answer``: (status, JSON body, headers)."""
    arrived = time.perf_counter()
    config = runtime.config
    model = runtime.state.models.get(name)
    label = name if model is not None else UNKNOWN_MODEL_LABEL
    status = 500
    try:
        if body.timed_out:  # first: whatever else is wrong, this connection is closed (its body never ended)
            raise HttpProblem(408, f"the request body did not arrive within {config.body_timeout_seconds:g} s",
                              body_timeout_seconds=config.body_timeout_seconds)
        check_access(config.api_tokens, authorization, name, model)  # 401/403 before anything else is said
        if model is None:
            raise HttpProblem(404, f"no model named {name!r} is served", served=sorted(runtime.state.models))
        if not is_json_media_type(content_type):
            given = f"got {content_type!r}" if content_type else "no Content-Type header"
            raise HttpProblem(415, f"the request body must be JSON sent with Content-Type: application/json ({given})",
                              accepted="application/json")
        request_id = checked_request_id(given_request_id)
        if body.oversized or len(body.data) > config.body_limit:
            raise HttpProblem(413, f"request body above {config.body_limit} bytes")
        records = route.records(parse_json(body.data))
        if len(records) > route.max_records:
            raise HttpProblem(413, f"{len(records)} records in one {route.name} request; at most {route.max_records}",
                              max_batch=route.max_records)
        if model.champion is None:
            raise HttpProblem(503, f"model {name!r} has no servable champion yet", model=name,
                              refused_versions=dict(model.refused))
        try:
            rows = model.schema.check(records)
        except RecordProblems as problems:
            raise HttpProblem(422, "invalid records", problems=problems.problems) from None
        answer = await route.answer(ScoringCall(model, records, rows, request_id, arrived, query or {}))
        payload = dumps(answer)
        status = 200
        return 200, payload, {REQUEST_ID_HEADER: request_id}
    except HttpProblem as problem:
        status = problem.status
        return problem.status, dumps(problem.body), ({"connection": "close"} if status == 408 else problem.headers)
    except Exception:  # noqa: BLE001 - a genuine server fault: answer with an id to find the traceback by
        error_id = uuid.uuid4().hex
        log.exception("error %s on POST /v1/models/%s/%s", error_id, name, route.name)
        return 500, dumps({"error": "internal error", "error_id": error_id}), {}
    finally:
        runtime.metrics.requests.labels(label, route.name, str(status)).inc()
        if status >= 400:
            runtime.metrics.errors.labels(label, route.name, str(status)).inc()


class ScoringFront:
    """The ASGI entry: scoring routes go through :func:`handle`; everything else is the FastAPI application's."""

    def __init__(self, app: Any, runtime: ServingRuntimeLike, routes: Mapping[str, Route]):
        self.app = app
        self.runtime = runtime
        self.routes = dict(routes)
        self.state = app.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        match = SCORING_PATH.match(scope["path"])
        route = self.routes.get(match.group(2)) if match is not None else None
        if route is None:
            return await self.app(scope, receive, _closing(send))
        body = await self.runtime.body_deadlines.read(receive, self.runtime.config.body_limit)
        if body is None:
            return None
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        raw_query = scope.get("query_string") or b""
        query = dict(parse_qsl(raw_query.decode("latin-1"))) if raw_query else None
        content_type = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), None)
        authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        status, payload, headers = await handle(self.runtime, route, match.group(1), body, given, query,
                                                content_type=content_type, authorization=authorization)
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        if self.runtime.draining:  # no keep-alive reuse of a replica that is about to stop
            raw_headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})
        return None


def _closing(send: Any) -> Any:
    """``send`` that closes the connection after the answer: a POST that is not a scoring route is answered
    (404/405) without its body being read, and a half-sent body must not keep the connection open."""

    async def closing_send(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return closing_send
