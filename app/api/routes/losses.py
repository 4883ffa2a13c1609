"""The loss registry and what a client does with a loss: evaluate, artifact, landscape, meta-test.

``{loss_id}`` is ``name``, ``name:3`` or ``name@alias``, resolved on every request (evaluate: through
the resolver's short cache, which this process's own alias and version changes clear at once)."""

from __future__ import annotations

import base64
import json
import re
from typing import Annotated

import torch
from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import func, select

from ml3core.api import landscape, landscape_png, parse_meta_test

from ... import limits, registry
from ...errors import invalid
from ...evaluate import (
    check_logits,
    evaluate,
    evaluate_classification,
    is_classification,
    labels_tensor,
    parse_big_json,
    to_tensor,
    torch_threads,
)
from ...limits import exceeded
from ...models import META_TEST, Loss, LossAlias, LossVersion
from ...schemas import AliasRequest, EvaluateRequest, MetaTestRequest, TagRequest, iso, version_json
from ..deps import ADMIN, DB, READ, PageDep, ReadKey, SubmitKey, reject_unknown_query
from ..head import head_of
from .jobs import IdempotencyKey, create_job

DEVICE = re.compile(r"cpu|cuda(:[0-9]{1,3})?")
router = APIRouter(prefix="/v1/losses", tags=["losses"], dependencies=[READ])
INLINE_VALUES = 20_000  # bigger batches are evaluated off the event loop


def _aliases_of(db, v: LossVersion) -> list[str]:
    return list(db.scalars(select(LossAlias.alias).where(LossAlias.version_id == v.id)))


def _version(db, loss_id: str) -> tuple[registry.Resolved, LossVersion]:
    r = registry.resolve(db, loss_id)
    return r, db.get(LossVersion, r.id)


@router.get("", summary="List registered losses")
def list_losses(db: DB, page: PageDep) -> dict:
    q = select(Loss).order_by(Loss.id).limit(page.limit + 1)
    if page.after is not None:
        q = q.where(Loss.id > page.after)
    rows = list(db.scalars(q))
    latest = dict(db.execute(select(LossVersion.loss_id, func.max(LossVersion.version))
                             .where(LossVersion.loss_id.in_([r.id for r in rows]))
                             .group_by(LossVersion.loss_id)).all())

    def render(loss: Loss) -> dict:
        versions = {v.id: v.version for v in loss.versions}
        return {"name": loss.name, "latest_version": latest.get(loss.id), "created_at": iso(loss.created_at),
                "aliases": {a.alias: versions.get(a.version_id) for a in loss.aliases},
                "links": {"self": f"/v1/losses/{loss.name}", "versions": f"/v1/losses/{loss.name}/versions"}}

    return page.result(rows, lambda r: r.id, render)


@router.get("/{loss_id}", summary="A loss version (latest, :version or @alias)")
def show(db: DB, loss_id: str) -> dict:
    r, v = _version(db, loss_id)
    return version_json(r.name, v, _aliases_of(db, v))


@router.get("/{name}/versions", summary="Versions of a loss, newest first")
def versions(db: DB, name: str, page: PageDep) -> dict:
    loss = registry.get_loss(db, name)
    q = select(LossVersion).where(LossVersion.loss_id == loss.id).order_by(LossVersion.version.desc())
    if page.after is not None:
        q = q.where(LossVersion.version < page.after)
    rows = list(db.scalars(q.limit(page.limit + 1)))
    by_version: dict[int, list[str]] = {}
    for a in loss.aliases:
        by_version.setdefault(a.version_id, []).append(a.alias)
    return page.result(rows, lambda v: v.version, lambda v: version_json(name, v, by_version.get(v.id, [])))


@router.get("/{name}/aliases", summary="Aliases of a loss")
def aliases(db: DB, name: str) -> dict:
    loss = registry.get_loss(db, name)
    q = select(LossVersion.id, LossVersion.version).where(LossVersion.loss_id == loss.id)
    versions = dict(db.execute(q).all())
    return {"name": name, "aliases": {a.alias: versions[a.version_id] for a in loss.aliases}}


@router.put("/{name}/aliases/{alias}", summary="Set or move an alias to a version", dependencies=[ADMIN])
def set_alias(db: DB, name: str, alias: str, body: AliasRequest) -> dict:
    registry.set_alias(db, name, alias, body.version)
    db.commit()
    return {"name": name, "alias": alias, "version": body.version, "id": f"{name}@{alias}"}


@router.delete("/{name}/aliases/{alias}", status_code=204, summary="Delete an alias", dependencies=[ADMIN])
def delete_alias(db: DB, name: str, alias: str) -> Response:
    registry.delete_alias(db, name, alias)
    db.commit()
    return Response(status_code=204)


@router.get("/{loss_id}/tags", summary="Tags of a loss version")
def tags(db: DB, loss_id: str) -> dict:
    r, v = _version(db, loss_id)
    return {"id": r.ref, "tags": {t.key: t.value for t in v.tags}}


@router.put("/{loss_id}/tags/{key}", summary="Set a tag on a loss version", dependencies=[ADMIN])
def set_tag(db: DB, loss_id: str, key: str, body: TagRequest) -> dict:
    r = registry.resolve(db, loss_id)
    registry.set_tag(db, r.id, key, body.value)
    db.commit()
    return tags(db, r.ref)


@router.delete("/{loss_id}/tags/{key}", status_code=204, summary="Delete a tag of a loss version",
               dependencies=[ADMIN])
def delete_tag(db: DB, loss_id: str, key: str) -> Response:
    r = registry.resolve(db, loss_id)
    registry.delete_tag(db, r.id, key)
    db.commit()
    return Response(status_code=204)


# -- using a loss ------------------------------------------------------------------------------------
def _loaded(request: Request, loss_id: str):
    """Resolve (aliases move: ``FastResolver`` says how fresh), then the cached module for (version id, sha256)."""
    state = request.app.state
    r = state.resolve(loss_id)

    def load():
        with state.engine.connect() as conn:
            return registry.load_bundle(conn, r.id).module()

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
    """Evaluate a classification loss (form ce_classwise) on (N, C) logits and labels."""
    r, module = _loaded(request, loss_id)
    if not is_classification(module):
        raise invalid("pred", "required: this loss is not a classification loss; send pred and target")
    check_logits(logits)
    if labels is None:
        raise invalid("labels", "required with logits")
    targets = labels_tensor(labels, logits, request.app.state.settings.max_eval_values)
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
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise invalid("labels", "comma-separated class indices, e.g. 0,2,1") from None
    if len(values) > limit:
        raise exceeded("max_query_values", 413, f"labels: {len(values)} values", limit, loc="labels")
    return values


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
            openapi_extra={"parameters": EVAL_QUERY})
async def evaluate_get(request: Request, loss_id: str, key: ReadKey) -> Response:
    state = request.app.state
    limits.check_rate(state.eval_limiter, key.client, state.settings)
    q = request.query_params
    reject_unknown_query(request, EVAL_QUERY_NAMES)
    limit = request.app.state.settings.max_query_values
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


EVAL_BODY = {"requestBody": {"required": True, "content": {"application/json": {
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
             openapi_extra=EVAL_BODY)
async def evaluate_post(request: Request, loss_id: str, key: ReadKey) -> Response:
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


@router.get("/{loss_id}/artifact", summary="The loss bundle (zip of loss.safetensors + loss.json)",
            response_class=Response, responses={200: {"content": {"application/zip": {}}}, 304: {}})
def artifact(db: DB, loss_id: str, if_none_match: Annotated[str | None, Header()] = None) -> Response:
    r = registry.resolve(db, loss_id)
    etag = f'"{r.sha256}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Loss-Id": r.ref}
    wanted = [t.strip() for t in (if_none_match or "").split(",")]
    if "*" in wanted or etag in wanted:
        return Response(status_code=304, headers=headers)
    data = registry.load_bundle(db, r.id).to_zip()
    headers["Content-Disposition"] = f'attachment; filename="{r.name}-v{r.version}.zip"'
    return Response(data, media_type="application/zip", headers=headers)


@router.head("/{loss_id}/artifact", summary="The bundle's headers (ETag, Content-Length, X-Loss-Id), no body",
             response_class=Response, responses={200: {"content": {"application/zip": {}}}, 304: {}})
def artifact_head(db: DB, loss_id: str, if_none_match: Annotated[str | None, Header()] = None) -> Response:
    return head_of(artifact(db, loss_id, if_none_match))


LANDSCAPE_QUERY = {"targets", "lo", "hi", "points", "x", "classes", "format"}


@router.get("/{loss_id}/landscape", summary="The loss over a grid of predictions (JSON or ?format=png)",
            responses={200: {"content": {"application/json": {}, "image/png": {}}}})
def landscape_view(request: Request, db: DB, loss_id: str,
                   format: Annotated[str, Query(pattern="^(json|png)$")] = "json") -> Response:
    reject_unknown_query(request, LANDSCAPE_QUERY)
    q = request.query_params
    options: dict = {}
    try:
        if "targets" in q:
            options["targets"] = [float(t) for t in q["targets"].split(",")]
        for key in ("lo", "hi", "x"):
            if key in q:
                options[key] = float(q[key])
        for key in ("points", "classes"):  # classes: a classification loss's landscape over C classes
            if key in q:
                options[key] = int(q[key])
    except ValueError as e:
        raise invalid("query", f"numbers expected: {e}") from None
    r = registry.resolve(db, loss_id)
    torch_threads(request.app.state.settings.api_threads)
    data = landscape(registry.load_bundle(db, r.id), options)  # ConfigError -> 422
    if format == "png":
        return Response(landscape_png(data), media_type="image/png")
    return Response(json.dumps({"id": r.ref, **data}), media_type="application/json")


@router.post("/{loss_id}/meta-test", status_code=202, summary="Meta-test a loss against MSE (a job)")
def meta_test(request: Request, response: Response, db: DB, key: SubmitKey, loss_id: str,
              body: Annotated[MetaTestRequest | None, Body()] = None,
              idempotency_key: IdempotencyKey = None) -> dict:
    body = body or MetaTestRequest()
    settings = request.app.state.settings
    r = registry.resolve(db, loss_id)  # pinned: the job tests this version even if an alias moves
    spec = body.model_dump(exclude_none=True, exclude={"device"})
    limits.check_arrays(spec, settings)
    seeds = 1 if body.seeds is None else body.seeds  # before the engine builds a list of that many ids
    limits.at_most(settings, "max_seeds", "seeds", seeds if isinstance(seeds, int) else len(seeds))
    if not DEVICE.fullmatch(body.device):
        raise invalid("device", "cpu or cuda[:N]")
    bundle = registry.load_bundle(db, r.id)
    family, seed_ids, cfg = parse_meta_test(bundle, spec)  # ConfigError -> 422, nothing stored
    limits.check_meta_test_job(family, bundle.loss_spec(), len(seed_ids), cfg, settings)
    request_body = {"loss": loss_id, **body.model_dump(exclude_unset=True)}
    return create_job(request, response, db, META_TEST, request_body,
                      {"loss": r.ref, "spec": spec, "device": body.device}, idempotency_key,
                      f"losses/{loss_id}/meta-test", loss_version_id=r.id, api_key_id=key.key_id,
                      progress_total=1, progress_unit="runs")

