"""``POST /v1/models/{name}/explain``: the champion's prediction for each record and the features behind it.

The same checks as predict (unknown model 404, no champion 503, body size 413, malformed JSON 400, bad records 422
naming every problem), then per record: the prediction, the version, and its top contributions
(:mod:`mlplatform.lib.explain`). Explanations are for people reading a decision: they are not routed to a canary
and not written to the prediction log. The explainer of a version is built once (TreeSHAP's setup, or a non-tree
version's background rows read from its MLflow run) and kept while the version is served.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from mlplatform.lib.explain import TOP_K, Explainer
from mlplatform.serving.schema import RecordProblems

if TYPE_CHECKING:
    from mlplatform.serving.app import ServingRuntime
    from mlplatform.serving.models import LoadedModel

ROUTE = "explain"
MAX_EXPLAIN_RECORDS = 100
"""Records per explain request: a non-tree record costs a few hundred model evaluations."""


class Explainers:
    """One :class:`Explainer` per served version, built on first use and dropped with the version."""

    def __init__(self, tracker: Any):
        self.tracker = tracker
        self._built: dict[tuple[str, str], Explainer] = {}
        self._lock = threading.Lock()

    def get(self, model: LoadedModel) -> Explainer:
        key = (model.name, model.version)
        with self._lock:
            found = self._built.get(key)
        if found is not None and found.pipeline is model.pipeline:
            return found
        explainer = self._build(model)
        with self._lock:
            self._built = {k: v for k, v in self._built.items() if k[0] != model.name}  # only the served version
            self._built[key] = explainer
        return explainer

    def _build(self, model: LoadedModel) -> Explainer:
        from mlplatform.lib.explain import is_tree_model

        features = [*model.numeric, *model.categorical]
        if is_tree_model(model.pipeline.named_steps["estimator"]):
            explainer = Explainer(model.pipeline, model.task, features)
            if explainer.method == "tree_shap":
                return explainer
        return Explainer(model.pipeline, model.task, features, background=self._background(model))

    def _background(self, model: LoadedModel):
        import io

        import pandas as pd

        from mlplatform import names
        from mlplatform.serving.app import HttpProblem

        run_id = self.tracker.client.get_model_version(model.name, model.version).run_id
        stored = self.tracker.read_artifact(run_id, names.BACKGROUND_PARQUET)
        if stored is None:
            raise HttpProblem(409, f"v{model.version} of {model.name!r} cannot explain single predictions: it is not a "
                              "tree model and its MLflow run holds no background rows (explain_background.parquet; "
                              "versions trained by the platform have them)", model=model.name, version=model.version)
        return pd.read_parquet(io.BytesIO(stored))


def top_k(request: Request, limit: int) -> int:
    from mlplatform.serving.app import HttpProblem

    given = request.query_params.get("top")
    if given is None:
        return min(TOP_K, limit)
    try:
        value = int(given)
    except ValueError:
        value = 0
    if not 1 <= value <= limit:
        raise HttpProblem(422, f"top must be a whole number from 1 to {limit} (the model's features)", found=given)
    return value


async def explain_request(runtime: ServingRuntime, explainers: Explainers, name: str,
                          request: Request) -> tuple[int, bytes, dict[str, str]]:
    from mlplatform.serving.app import (
        REQUEST_ID_HEADER,
        UNKNOWN_MODEL_LABEL,
        HttpProblem,
        _dumps,
        checked_request_id,
        parse_json,
        predict_records,
    )

    config = runtime.config
    model = runtime.state.models.get(name)
    label = name if model is not None else UNKNOWN_MODEL_LABEL
    status = 500
    try:
        if model is None:
            raise HttpProblem(404, f"no model named {name!r} is served", served=sorted(runtime.state.models))
        request_id = checked_request_id(request.headers.get(REQUEST_ID_HEADER))
        body = await request.body()
        if len(body) > config.body_limit:
            raise HttpProblem(413, f"request body above {config.body_limit} bytes")
        records = predict_records(parse_json(body))
        limit = min(config.max_batch, MAX_EXPLAIN_RECORDS)
        if len(records) > limit:
            raise HttpProblem(413, f"{len(records)} records in one explain request; at most {limit}", max_records=limit)
        champion = model.champion
        if champion is None:
            raise HttpProblem(503, f"model {name!r} has no servable champion yet", model=name,
                              refused_versions=dict(model.refused))
        try:
            rows = model.schema.check(records)
        except RecordProblems as problems:
            raise HttpProblem(422, "invalid records", problems=problems.problems) from None
        k = top_k(request, len(model.schema.feature_names))
        started = time.perf_counter()
        answers = await asyncio.to_thread(_explain, explainers, champion, rows, k)
        runtime.metrics.latency.labels(name, champion.version, ROUTE).observe(time.perf_counter() - started)
        status = 200
        return 200, _dumps({"request_id": request_id, "model": name, "version": champion.version,
                            "explanations": answers}), {REQUEST_ID_HEADER: request_id}
    except HttpProblem as problem:
        status = problem.status
        return problem.status, _dumps(problem.body), {}
    except Exception:  # noqa: BLE001 - a genuine server fault: answer with an id to find the traceback by
        import logging

        error_id = uuid.uuid4().hex
        logging.getLogger("mlplatform.serving").exception("error %s on POST /v1/models/%s/explain", error_id, name)
        return 500, _dumps({"error": "internal error", "error_id": error_id}), {}
    finally:
        runtime.metrics.requests.labels(label, ROUTE, str(status)).inc()
        if status >= 400:
            runtime.metrics.errors.labels(label, ROUTE, str(status)).inc()


def _explain(explainers: Explainers, model: LoadedModel, rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    explainer = explainers.get(model)
    outputs = model.predict(rows)
    explained = explainer.explain(model.frame(rows), k)
    return [{"index": i, **{key: v for key, v in output.items() if key != "score"}, "version": model.version,
             **explanation.as_dict()} for i, (output, explanation) in enumerate(zip(outputs, explained, strict=True))]


def add_explain_route(app: FastAPI, runtime: ServingRuntime) -> None:
    """Register ``POST /v1/models/{name}/explain`` on the FastAPI application."""
    explainers = Explainers(runtime.config.tracker)
    record = {"type": "object", "description": "a record as for /predict"}
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["records"],
        "properties": {"records": {"type": "array", "minItems": 1, "maxItems": MAX_EXPLAIN_RECORDS, "items": record}},
    }}}}, "parameters": [{"name": "top", "in": "query", "required": False,
                          "schema": {"type": "integer", "minimum": 1, "default": TOP_K},
                          "description": "how many contributions per record (largest first)"}]}

    @app.post("/v1/models/{name}/explain", summary="Explain the champion's predictions for one or more records",
              openapi_extra=body_doc)
    async def explain(name: str, request: Request) -> Response:
        """Body: `{"records": [record, ...]}` (as predict). Answer per record: prediction (+ probabilities), version,
        the explained output (e.g. log-odds of the positive class), its base value, and the top contributions of
        the spec's features with the record's values (`?top=K`, default 5); the rest summed in `other_features`."""
        status, body, headers = await explain_request(runtime, explainers, name, request)
        return Response(body, status_code=status, media_type="application/json", headers=headers)
