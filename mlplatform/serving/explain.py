"""``POST /v1/models/{name}/explain``: the champion's prediction for each record and the features behind it.

The same request path as predict (:mod:`mlplatform.serving.protocol`: unknown model 404, no champion 503, body
size 413, body timeout 408, malformed JSON 400, bad records 422 naming every problem, a prediction that is not
finite 422), then per record: the prediction, the version, and its top contributions (:mod:`mlplatform.lib.explain`). Explanations are for people reading a decision: they are not routed to a canary
and not written to the prediction log. The explainer of a version is built once (TreeSHAP's setup, or a non-tree
version's background rows read from its MLflow run) and kept while the version is served.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from mlplatform.lib.explain import TOP_K, Explainer, RowExplanation
from mlplatform.serving.models import LoadedModel, finite_output
from mlplatform.serving.protocol import HttpProblem, Route, ScoringCall, not_finite, predict_records

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

        features = [*model.numeric, *model.categorical, *model.text]
        if is_tree_model(model.pipeline.named_steps["estimator"]):
            explainer = Explainer(model.pipeline, model.task, features)
            if explainer.method == "tree_shap":
                return explainer
        return Explainer(model.pipeline, model.task, features, background=self._background(model))

    def _background(self, model: LoadedModel):
        import io

        import pandas as pd

        from mlplatform import names

        run_id = self.tracker.client.get_model_version(model.name, model.version).run_id
        stored = self.tracker.read_artifact(run_id, names.BACKGROUND_PARQUET)
        if stored is None:
            raise HttpProblem(409, f"v{model.version} of {model.name!r} cannot explain single predictions: it is not a "
                              "tree model and its MLflow run holds no background rows (explain_background.parquet; "
                              "versions trained by the platform have them)", model=model.name, version=model.version)
        return pd.read_parquet(io.BytesIO(stored))


def top_k(query: Mapping[str, str], limit: int) -> int:
    given = query.get("top")
    if given is None:
        return min(TOP_K, limit)
    try:
        value = int(given)
    except ValueError:
        value = 0
    if not 1 <= value <= limit:
        raise HttpProblem(422, f"top must be a whole number from 1 to {limit} (the model's features)", found=given)
    return value


def explain_route(tracker: Any, metrics: Any, max_batch: int) -> Route:
    """The explain route for :func:`mlplatform.serving.protocol.handle`: the champion's explanation of checked rows."""
    explainers = Explainers(tracker)

    async def answer(call: ScoringCall) -> Any:
        champion = call.model.champion
        assert champion is not None  # protocol.handle answered 503 otherwise
        k = top_k(call.query, len(call.model.schema.feature_names))
        started = time.perf_counter()
        answers = await asyncio.to_thread(_explain, explainers, champion, call.rows, k)
        metrics.latency.labels(champion.name, champion.version, ROUTE).observe(time.perf_counter() - started)
        return {"request_id": call.request_id, "model": champion.name, "version": champion.version,
                "explanations": answers}

    return Route(ROUTE, predict_records, min(max_batch, MAX_EXPLAIN_RECORDS), answer)


def _explain(explainers: Explainers, model: LoadedModel, rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    outputs = model.predict(rows)
    overflowed = [i for i, output in enumerate(outputs) if not finite_output(output)]
    if overflowed:
        raise not_finite(overflowed)
    explainer = explainers.get(model)
    explained = explainer.explain(model.frame(rows), k)
    overflowed = [i for i, explanation in enumerate(explained) if not _finite_explanation(explanation)]
    if overflowed:
        raise not_finite(overflowed, "explanation")
    return [{"index": i, **{key: v for key, v in output.items() if key != "score"}, "version": model.version,
             **explanation.as_dict()} for i, (output, explanation) in enumerate(zip(outputs, explained, strict=True))]


def _finite_explanation(explanation: RowExplanation) -> bool:
    numbers = [explanation.base_value, explanation.output_value, explanation.rest,
               *(c.contribution for c in explanation.top)]
    return all(math.isfinite(n) for n in numbers)


def add_explain_route(app: FastAPI, handler: Callable[[str, Request], Awaitable[Response]]) -> None:
    """Register ``POST /v1/models/{name}/explain`` on the FastAPI application (its OpenAPI entry; requests are
    answered by the protocol's front, through the same :func:`mlplatform.serving.protocol.handle`)."""
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
        return await handler(name, request)
