"""The loss registry and what a client does with a loss: artifact, landscape, meta-test (evaluate,
the hot path, lives in ``evaluate.py``).

``{loss_id}`` is ``name``, ``name:3`` or ``name@alias``, resolved on every request."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response
from sqlalchemy import and_, func, or_, select

from app.api.deps import ADMIN, DB, READ, IdempotencyKey, PageDep, SubmitKey, reject_unknown_query
from app.api.head import head_of
from app.api.openapi import problems
from app.api.schemas import (
    AliasesOut,
    AliasOut,
    AliasRequest,
    JobOut,
    LandscapeOut,
    LossPage,
    LossPatch,
    LossVersionOut,
    MetaTestRequest,
    TagRequest,
    TagsOut,
    VersionPage,
    accepted,
    version_json,
)
from app.core.errors import Problem, invalid
from app.db.models import META_TEST, Loss, LossAlias, LossTag, LossVersion, iso
from app.jobs.runner import check_device
from app.services import limits, registry
from app.services.evaluate import CLASSIFICATION_FORMS, torch_threads
from app.services.ids import parse_int
from app.services.jobs import create_job
from ml3core.api import landscape, landscape_png, parse_meta_test
from ml3core.export import FORMATS, ExporterMissing, ExportError, export
from ml3core.tasks import FAMILIES

router = APIRouter(prefix="/v1/losses", tags=["losses"], dependencies=[READ])


def _aliases_of(db, v: LossVersion) -> list[str]:
    return list(db.scalars(select(LossAlias.alias).where(LossAlias.version_id == v.id)))


def _version(db, loss_id: str) -> tuple[registry.Resolved, LossVersion]:
    r = registry.resolve(db, loss_id)
    return r, db.get(LossVersion, r.id)


LIST_QUERY = {"limit", "cursor", "family", "q", "tag"}


def _like(text: str) -> str:
    """A case-insensitive substring pattern for ILIKE with ``\\`` as its escape character."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _tag_filter(request: Request, tag: str) -> tuple[str, str | None]:
    """``KEY`` or ``KEY=VALUE`` (a key holds no ``=``); one ``?tag=``, as every other list parameter."""
    key, sep, value = tag.partition("=")
    if len(request.query_params.getlist("tag")) > 1 or not registry.TAG_RE.fullmatch(key) \
            or not registry.tag_value_ok(value):
        raise invalid("tag", "one KEY or KEY=VALUE: a key of letters, digits and ._:/- (at most 64), "
                             "a value of at most 256 characters without NUL")
    return key, value if sep else None


@router.get("", summary="List registered losses (filter by ?family= or ?tag=, search name and description by ?q=)",
            response_model=LossPage)
def list_losses(request: Request, db: DB, page: PageDep,
                family: Annotated[str | None, Query(description="task family of the latest version, e.g. sine")] = None,
                q: Annotated[str | None, Query(max_length=200, description="text in the name or the latest "
                                                                         "version's description")] = None,
                tag: Annotated[str | None, Query(max_length=321, description="KEY or KEY=VALUE: a tag (and its "
                                                 "value) of the latest version")] = None) -> dict:
    reject_unknown_query(request, LIST_QUERY)
    wanted = None if tag is None else _tag_filter(request, tag)
    query = select(Loss).order_by(Loss.id).limit(page.limit + 1)
    if page.after is not None:
        query = query.where(Loss.id > page.after)
    if family is not None or q or wanted:
        if family is not None and family not in FAMILIES:
            raise invalid("family", f"one of {sorted(FAMILIES)}")
        newest = (select(LossVersion.loss_id, func.max(LossVersion.version).label("version"))
                  .group_by(LossVersion.loss_id).subquery())
        query = (query.join(newest, newest.c.loss_id == Loss.id)
                 .join(LossVersion, and_(LossVersion.loss_id == Loss.id, LossVersion.version == newest.c.version)))
        if family is not None:
            query = query.where(LossVersion.family == family)
        if q:
            query = query.where(or_(Loss.name.ilike(_like(q), escape="\\"),
                                    LossVersion.description.ilike(_like(q), escape="\\")))
        if wanted:
            key, value = wanted
            has = select(LossTag.version_id).where(LossTag.version_id == LossVersion.id, LossTag.key == key)
            query = query.where(has.where(LossTag.value == value).exists() if value is not None else has.exists())
    rows = list(db.scalars(query))
    ids = [r.id for r in rows]
    latest = dict(db.execute(select(LossVersion.loss_id, func.max(LossVersion.version))
                             .where(LossVersion.loss_id.in_(ids)).group_by(LossVersion.loss_id)).all())
    aliases: dict[int, dict] = {}  # only the small columns: no version's stored spec is read for a list
    for loss_id, alias, version in db.execute(
            select(LossAlias.loss_id, LossAlias.alias, LossVersion.version)
            .join(LossVersion, LossVersion.id == LossAlias.version_id)
            .where(LossAlias.loss_id.in_(ids)).order_by(LossAlias.alias)):
        aliases.setdefault(loss_id, {})[alias] = version
    verdicts, families, descriptions = {}, {}, {}  # the newest version's (its metrics, not its spec)
    if latest:
        newest = or_(*(and_(LossVersion.loss_id == i, LossVersion.version == v) for i, v in latest.items()))
        for loss_id, metrics, fam, text in db.execute(select(LossVersion.loss_id, LossVersion.metrics,
                                                             LossVersion.family, LossVersion.description)
                                                      .where(newest)):
            verdicts[loss_id] = metrics.get("verdict") if isinstance(metrics, dict) else None
            families[loss_id], descriptions[loss_id] = fam, text

    def render(loss: Loss) -> dict:
        return {"name": loss.name, "latest_version": latest.get(loss.id), "created_at": iso(loss.created_at),
                "latest_verdict": verdicts.get(loss.id), "family": families.get(loss.id),
                "description": descriptions.get(loss.id),
                "aliases": aliases.get(loss.id, {}),
                "links": {"self": f"/v1/losses/{loss.name}", "versions": f"/v1/losses/{loss.name}/versions"}}

    return page.result(rows, lambda r: r.id, render)


@router.get("/{loss_id}", summary="A loss version (latest, :version or @alias)", response_model=LossVersionOut)
def show(db: DB, loss_id: str) -> dict:
    r, v = _version(db, loss_id)
    return version_json(r.name, v, _aliases_of(db, v))


@router.patch("/{loss_id}", summary="Change a loss version's description", response_model=LossVersionOut,
              dependencies=[ADMIN], responses=problems(413))
def patch(db: DB, loss_id: str, body: LossPatch) -> dict:
    r = registry.resolve(db, loss_id)  # name alone: the latest version
    registry.set_description(db, r.id, body.description)
    db.commit()
    return show(db, r.ref)


@router.get("/{name}/versions", summary="Versions of a loss, newest first", response_model=VersionPage)
def versions(db: DB, name: str, page: PageDep) -> dict:
    loss = registry.get_loss(db, name)
    q = select(LossVersion).where(LossVersion.loss_id == loss.id).order_by(LossVersion.version.desc())
    if page.after is not None:
        q = q.where(LossVersion.version < page.after)
    rows = list(db.scalars(q.limit(page.limit + 1)))
    by_version: dict[int, list[str]] = {}
    for a in loss.aliases:
        by_version.setdefault(a.version_id, []).append(a.alias)
    return page.result(rows, lambda v: v.version,
                       lambda v: version_json(name, v, by_version.get(v.id, []), listed=True))


@router.get("/{name}/aliases", summary="Aliases of a loss", response_model=AliasesOut)
def aliases(db: DB, name: str) -> dict:
    loss = registry.get_loss(db, name)
    q = select(LossVersion.id, LossVersion.version).where(LossVersion.loss_id == loss.id)
    versions = dict(db.execute(q).all())
    return {"name": name, "aliases": {a.alias: versions[a.version_id] for a in loss.aliases}}


@router.put("/{name}/aliases/{alias}", summary="Set or move an alias to a version", dependencies=[ADMIN],
            response_model=AliasOut, responses=problems(413))
def set_alias(db: DB, name: str, alias: str, body: AliasRequest) -> dict:
    registry.commit_upsert(db, lambda db: registry.set_alias(db, name, alias, body.version))
    return {"name": name, "alias": alias, "version": body.version, "id": f"{name}@{alias}"}


@router.delete("/{name}/aliases/{alias}", status_code=204, summary="Delete an alias", dependencies=[ADMIN])
def delete_alias(db: DB, name: str, alias: str) -> Response:
    registry.delete_alias(db, name, alias)
    db.commit()
    return Response(status_code=204)


@router.get("/{loss_id}/tags", summary="Tags of a loss version", response_model=TagsOut)
def tags(db: DB, loss_id: str) -> dict:
    r, v = _version(db, loss_id)
    return {"id": r.ref, "tags": {t.key: t.value for t in v.tags}}


@router.put("/{loss_id}/tags/{key}", summary="Set a tag on a loss version", dependencies=[ADMIN],
            response_model=TagsOut, responses=problems(413))
def set_tag(db: DB, loss_id: str, key: str, body: TagRequest) -> dict:
    r = registry.resolve(db, loss_id)
    registry.commit_upsert(db, lambda db: registry.set_tag(db, r.id, key, body.value))
    return tags(db, r.ref)


@router.delete("/{loss_id}/tags/{key}", status_code=204, summary="Delete a tag of a loss version",
               dependencies=[ADMIN])
def delete_tag(db: DB, loss_id: str, key: str) -> Response:
    r = registry.resolve(db, loss_id)
    registry.delete_tag(db, r.id, key)
    db.commit()
    return Response(status_code=204)


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
            response_model=LandscapeOut, responses={200: {"content": {"image/png": {}}}, **problems(413)})
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
                options[key] = parse_int(q[key], key)
    except ValueError as e:
        raise invalid("query", f"numbers expected: {e}") from None
    r = registry.resolve(db, loss_id)
    settings = request.app.state.settings
    bundle = registry.load_bundle(db, r.id)
    arch = bundle.spec["architecture"]
    # a classification loss is drawn over points x classes logits; the others' grids are a few curves
    classes = options.get("classes") or bundle.spec["task"].get("classes_per_task") or 100
    values = options.get("points", 121) * (classes if arch.get("form") in CLASSIFICATION_FORMS else 1)
    limits.check_request_bytes(limits.loss_bytes(arch, values, grad=False), f"a landscape of {values} values",
                               settings)
    torch_threads(settings.api_threads)
    data = landscape(bundle, options)  # ConfigError -> 422
    if format == "png":
        return Response(landscape_png(data), media_type="image/png")
    return Response(json.dumps({"id": r.ref, **data}), media_type="application/json")


EXPORT_SUFFIX = {"torchscript": "pt", "onnx": "onnx"}


@router.get("/{loss_id}/export", summary="The loss as TorchScript or ONNX, for use outside Python",
            response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}, **problems(501)})
def export_view(request: Request, db: DB, loss_id: str,
                format: Annotated[str, Query(description="torchscript (torch.jit.load, C++ torch::jit::load) or "
                                             "onnx (any ONNX runtime)")] = "torchscript") -> Response:
    """TorchScript takes (pred, target[, x][, reduction]) or (logits, labels) like ``load_loss``; ONNX takes
    pred, target[, x] as (N, D) arrays, or logits (N, C) and labels (N,) int64, and gives the reduced loss."""
    reject_unknown_query(request, {"format"})
    if format not in FORMATS:
        raise invalid("format", f"one of {list(FORMATS)}")
    r = registry.resolve(db, loss_id)
    module = registry.load_bundle(db, r.id).module()
    db.rollback()  # the reads are done: the connection goes back to the pool while the loss is compiled
    torch_threads(request.app.state.settings.api_threads)
    try:
        data = export(module, format)
    except ExporterMissing as e:
        raise Problem(501, "exporter_missing", str(e)) from None
    except ExportError as e:
        raise Problem(422, "not_exportable", f"{r.ref} cannot be exported as {format}: {e}") from None
    name = f"{r.name}-v{r.version}.{EXPORT_SUFFIX[format]}"
    return Response(data, media_type="application/octet-stream",
                    headers={"X-Loss-Id": r.ref, "Content-Disposition": f'attachment; filename="{name}"'})


@router.post("/{loss_id}/meta-test", status_code=202, summary="Meta-test a loss against MSE (a job)",
             response_model=JobOut, responses=problems(409, 413, 429))
def meta_test(request: Request, response: Response, db: DB, key: SubmitKey, loss_id: str,
              body: Annotated[MetaTestRequest | None, Body()] = None,
              idempotency_key: IdempotencyKey = None) -> dict:
    body = body or MetaTestRequest()
    settings = request.app.state.settings
    with request.app.state.write_slots.held(key.client, settings):  # 429 beyond max_key_writes at once
        r = registry.resolve(db, loss_id)  # pinned: the job tests this version even if an alias moves
        spec = body.model_dump(exclude_none=True, exclude={"device"})
        limits.check_arrays(spec, settings)
        seeds = 1 if body.seeds is None else body.seeds  # before the engine builds a list of that many ids
        limits.at_most(settings, "max_seeds", "seeds", seeds if isinstance(seeds, int) else len(seeds))
        check_device(body.device, settings)
        bundle = registry.load_bundle(db, r.id)
        db.rollback()  # the reads are done: the connection goes back to the pool while the spec is checked
        family, seed_ids, cfg = parse_meta_test(bundle, spec)  # ConfigError -> 422, nothing stored
        limits.check_meta_test_job(family, bundle.loss_spec(), len(seed_ids), cfg, settings)
        request_body = {"loss": loss_id, **body.model_dump(exclude_unset=True)}
        job = create_job(db, settings, request.app.state.runner, META_TEST, request_body,
                         {"loss": r.ref, "spec": spec, "device": body.device}, idempotency_key,
                         f"losses/{loss_id}/meta-test", loss_version_id=r.id, api_key_id=key.key_id,
                         progress_total=1, progress_unit="runs")
        return accepted(response, job)

