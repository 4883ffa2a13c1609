"""Evaluate a stored loss: ``GET`` (a few points in the query) and ``POST`` (a batch) on
``/v1/losses/{loss_id}/evaluate``, the API's smallest and most frequent requests.

``{loss_id}`` is ``name``, ``name:3`` or ``name@alias``, resolved on every request through the
resolver's short cache, which this process's own alias and version changes clear at once.

The handlers take only the ``Request``: the read-key check, the query and the body are done by
hand (FastAPI's dependency solving and parameter validation would cost as much as the loss itself
here). They are served by a plain Starlette route (``add_plain_route``) matched right after the
health probes; the FastAPI routes of ``router`` document them: path and query parameters, body
schema and security written out in ``openapi_extra``. Errors are the same problem+json answers as
everywhere else."""

from __future__ import annotations

import base64
import json

import torch
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.routing import Match, Route

from app.api.deps import read_key_inline, reject_unknown_query
from app.api.openapi import problems
from app.api.schemas import EvaluateOut, EvaluateRequest
from app.core.errors import invalid
from app.services import limits, registry
from app.services.evaluate import (
    CHUNK,
    check_logits,
    evaluate,
    evaluate_classification,
    is_classification,
    labels_tensor,
    parse_big_json,
    to_tensor,
)
from app.services.ids import is_digits
from app.services.limits import exceeded

router = APIRouter(prefix="/v1/losses", tags=["losses"])
INLINE_VALUES = 20_000  # bigger batches are evaluated off the event loop
LOSS_ID = {"name": "loss_id", "in": "path", "required": True, "schema": {"type": "string", "title": "Loss Id"},
           "description": "name, name:version or name@alias"}
READ_SECURITY = [{"HTTPBearer": ["read"]}]  # app/api/openapi.py marks it optional where reads need no key


def _loaded(request: Request, loss_id: str):
    """Resolve (aliases move: ``FastResolver`` says how fresh), then the cached module for (version id, sha256),
    loaded again after ``loss_recheck_seconds`` (``LossCache``)."""
    state = request.app.state
    r = state.resolve(loss_id)

    def load():
        with state.engine.connect() as conn:
            bundle = registry.load_bundle(conn, r.id)  # checked against the row's sha256 as it is now
        if bundle.sha256 != r.sha256:  # a version's row never changes: cached under r.sha256, it must be that
            raise registry.corrupt(r.name, r.version, f"its sha256 changed to {bundle.sha256[:12]}… after "
                                   f"it was resolved as {r.sha256[:12]}…")
        return bundle.module()

    return r, state.cache.get((r.id, r.sha256), load)


def _encode(t, encoding: str):
    if not isinstance(t, torch.Tensor):
        return t
    if encoding == "base64":
        return base64.b64encode(t.detach().contiguous().float().numpy().tobytes()).decode()
    return t.tolist()


async def _evaluate(request: Request, loss_id: str, pred, target, x, reduction, return_grad,
                    encoding) -> Response:
    r, module = _loaded(request, loss_id)
    if is_classification(module):
        raise invalid("logits", "required: a classification loss takes logits and labels, not pred and target")
    arch = module.arch
    copies = arch.get("pred_dim", 1) if arch.get("per_output") else 1
    rows = min(pred.shape[0] if pred.dim() else 1, CHUNK)  # evaluated in chunks of rows; a scalar is refused later
    need = limits.loss_bytes(arch, rows * copies, return_grad) + 16 * pred.numel()  # + the whole arrays
    limits.check_request_bytes(need, f"evaluating {pred.numel()} values", request.app.state.settings)
    request.app.state.stats["evaluate_values"] += pred.numel()
    args = (module, pred, target, x, reduction, return_grad, request.app.state.settings.api_threads)

    def compute() -> str:
        loss, grad = evaluate(*args)
        out = {"loss": _encode(loss, encoding), "id": r.ref, "sha256": r.sha256, "n": int(pred.shape[0])}
        if grad is not None:
            out["grad"] = _encode(grad, encoding)
        return json.dumps(out, allow_nan=False)  # evaluate refused NaN and infinity: this never raises

    # a big batch is evaluated and encoded off the event loop (a JSON list of millions takes seconds)
    content = await run_in_threadpool(compute) if pred.numel() > INLINE_VALUES else compute()
    return Response(content, media_type="application/json")


async def _evaluate_classification(request: Request, loss_id: str, logits, labels, reduction, return_grad,
                                   encoding) -> Response:
    """Evaluate a classification loss (form ce_classwise or weighted_ce) on (N, C) logits and labels."""
    r, module = _loaded(request, loss_id)
    if not is_classification(module):
        raise invalid("pred", "required: this loss is not a classification loss; send pred and target")
    check_logits(logits)
    if labels is None:
        raise invalid("labels", "required with logits")
    targets = labels_tensor(labels, logits, request.app.state.settings.max_eval_values)
    need = limits.loss_bytes(module.arch, logits.numel(), return_grad)  # every logit at once: not in chunks
    limits.check_request_bytes(need, f"evaluating {logits.numel()} logits", request.app.state.settings)
    request.app.state.stats["evaluate_values"] += logits.numel()
    args = (module, logits, targets, reduction, return_grad, request.app.state.settings.api_threads)
    if logits.numel() > INLINE_VALUES:
        loss, grad = await run_in_threadpool(evaluate_classification, *args)
    else:
        loss, grad = evaluate_classification(*args)
    out = {"loss": _encode(loss, encoding), "id": r.ref, "sha256": r.sha256, "n": int(logits.shape[0])}
    if grad is not None:
        out["grad"] = _encode(grad, encoding)
    return Response(json.dumps(out, allow_nan=False), media_type="application/json")


def _query_rows(text: str, loc: str, limit: int):
    """'a,b;c,d' -> a (2, 2) tensor: rows separated by ';', values by ','."""
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.split(";")]
    except ValueError:
        raise invalid(loc, "rows of comma-separated numbers separated by ';', e.g. 2,0.1;0.3,1") from None
    if len({len(row) for row in rows}) != 1:
        raise invalid(loc, "every row needs the same number of values")
    if sum(map(len, rows)) > limit:
        raise exceeded("max_query_values", 413, f"{loc}: {sum(map(len, rows))} values", limit, loc=loc)
    return to_tensor(rows, loc, limit, limit_name="max_query_values")


def _query_labels(text: str, limit: int) -> list[int]:
    parts = text.split(",")
    if len(parts) > limit:
        raise exceeded("max_query_values", 413, f"labels: {len(parts)} values", limit, loc="labels")
    if not all(map(is_digits, parts)):
        raise invalid("labels", "comma-separated class indices (ASCII digits), e.g. 0,2,1")
    return [int(v) for v in parts]


def _query_array(text: str | None, loc: str, limit: int):
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise invalid(loc, "comma-separated numbers, e.g. 0.1,0.5") from None
    return to_tensor(values, loc, limit, limit_name="max_query_values")


def _param(name: str, description: str, required: bool = False, **schema) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": {"type": "string", **schema}}


EVAL_QUERY = [
    _param("pred", "comma-separated predictions, e.g. 0.1,0.5 (regression losses)"),
    _param("target", "comma-separated targets, as many as pred"),
    _param("x", "comma-separated inputs, for losses that read them"),
    _param("reduction", "mean (default), sum or none", enum=["mean", "sum", "none"]),
    _param("return_grad", "also return d loss / d pred (or d loss / d logits)", type="boolean"),
    _param("logits", "classification losses: rows of comma-separated logits separated by ';', e.g. 2,0.1;0.3,1"),
    _param("labels", "classification losses: comma-separated class indices, one per row of logits"),
]
EVAL_QUERY_NAMES = frozenset(p["name"] for p in EVAL_QUERY)
BOOLS = {"true": True, "1": True, "false": False, "0": False}


# the query is parsed by hand (documented below): FastAPI's parameter machinery would cost as much as
# the loss itself on this, the smallest and most frequent request
@router.get("/{loss_id}/evaluate", summary="Evaluate a loss on a few points given in the query",
            openapi_extra={"parameters": [LOSS_ID, *EVAL_QUERY], "security": READ_SECURITY},
            response_model=EvaluateOut, responses=problems(413, 429))
async def evaluate_get(request: Request) -> Response:
    key = read_key_inline(request)
    loss_id = request.path_params["loss_id"]
    state = request.app.state
    limits.check_rate(state.eval_limiter, key.client, state.settings)
    q = request.query_params
    reject_unknown_query(request, EVAL_QUERY_NAMES)
    limit = state.settings.max_query_values
    reduction, return_grad = q.get("reduction", "mean"), BOOLS.get(q.get("return_grad", "false").lower())
    if reduction not in ("mean", "sum", "none"):
        raise invalid("reduction", "mean, sum or none")
    if return_grad is None:
        raise invalid("return_grad", "true or false")
    if "logits" in q or "labels" in q:
        if "logits" not in q or "labels" not in q:
            raise invalid("logits" if "logits" not in q else "labels", "required: logits and labels go together")
        logits = _query_rows(q["logits"], "logits", limit)
        labels = _query_labels(q["labels"], limit)
        return await _evaluate_classification(request, loss_id, logits, labels, reduction, return_grad, "json")
    for name in ("pred", "target"):
        if name not in q:
            raise invalid(name, "required")
    p, t = _query_array(q["pred"], "pred", limit), _query_array(q["target"], "target", limit)
    x = _query_array(q.get("x"), "x", limit)
    return await _evaluate(request, loss_id, p, t, x, reduction, return_grad, "json")


EVAL_BODY = {"parameters": [LOSS_ID], "security": READ_SECURITY, "requestBody": {
    "required": True, "content": {"application/json": {
        "schema": EvaluateRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


BIG_BODY = 256 * 1024  # bytes: a body larger than this (or of unknown length) is parsed off the event loop


def _parse_evaluate(raw: bytes, limit: int, big: bool = False):
    """(body, pred, target, x) of an evaluate POST, or (body, logits, None, None) of a classification
    one; a 4xx if the arrays are not what the route takes."""
    try:  # parsed by hand, like the GET: the body model is in the OpenAPI schema all the same
        body = EvaluateRequest.model_validate(parse_big_json(raw)) if big else EvaluateRequest.model_validate_json(raw)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_context=False)) from None
    shape = body.shape
    if body.logits is not None or body.labels is not None:
        if body.logits is None:
            raise invalid("logits", "required with labels")
        logits = to_tensor(body.logits, "logits", limit, shape)
        body.logits = None
        return body, logits, None, None  # no target: a classification body, labels stay in body
    for name in ("pred", "target"):
        if getattr(body, name) is None:
            raise invalid(name, "required")
    p, t = to_tensor(body.pred, "pred", limit, shape), to_tensor(body.target, "target", limit, shape)
    x = None if body.x is None else to_tensor(body.x, "x", limit)
    if x is not None and isinstance(body.x, str) and shape and shape[0] and x.numel() % shape[0] == 0:
        x = x.reshape(shape[0], -1)  # base64 x: one row of inputs per point
    body.pred = body.target = body.x = None  # the parsed lists (the bulk of the memory) can go now
    return body, p, t, x


@router.post("/{loss_id}/evaluate", summary="Evaluate a loss on a batch (JSON lists or base64 float32)",
             openapi_extra=EVAL_BODY, response_model=EvaluateOut, responses=problems(413, 429))
async def evaluate_post(request: Request) -> Response:
    key = read_key_inline(request)
    loss_id = request.path_params["loss_id"]
    state = request.app.state
    limits.check_rate(state.eval_limiter, key.client, state.settings)
    limit = state.settings.max_eval_values
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) <= BIG_BODY:
        return await _answer(request, loss_id, *_parse_evaluate(await request.body(), limit))
    # a big body: read, parsed and evaluated off the event loop (health checks and small requests go on),
    # at most max_big_evaluates at once, so their memory is bounded too; the others wait their turn
    async with state.big_evaluates:
        parsed = await run_in_threadpool(_parse_evaluate, await request.body(), limit, True)
        return await _answer(request, loss_id, *parsed)


async def _answer(request: Request, loss_id: str, body, p, t, x) -> Response:
    if t is None:  # classification: p holds the logits
        return await _evaluate_classification(request, loss_id, p, body.labels, body.reduction, body.return_grad,
                                              body.encoding)
    return await _evaluate(request, loss_id, p, t, x, body.reduction, body.return_grad, body.encoding)


# -- serving: a plain Starlette route in front of the documented FastAPI ones ---------------------------
class _PlainRoute(Route):
    """A Starlette route that names itself in the scope, as FastAPI's routes do (the request metrics
    label requests by ``scope["route"].path``)."""

    def matches(self, scope):
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


async def _serve(request: Request) -> Response:
    return await (evaluate_get if request.method == "GET" else evaluate_post)(request)


def add_plain_route(app) -> None:
    """Serve GET and POST evaluate through a plain Starlette route; the caller adds it right after
    the health probes and before ``router``, whose FastAPI routes document the same endpoints (and
    would serve them the same way without it). On this, the smallest request, FastAPI's per-request
    machinery (dependency solving, matching the nested router twice, its hooks) cost about as much
    as the loss's forward pass. Errors still go through the app's handlers."""
    route = _PlainRoute(f"{router.prefix}/{{loss_id}}/evaluate", _serve, methods=["GET", "POST"],
                        name="evaluate", include_in_schema=False)
    route.methods.discard("HEAD")  # Starlette adds HEAD to a GET route; FastAPI's route answers it 405
    app.router.routes.append(route)
