"""Data sets of tasks for the ``dataset`` family: upload (CSV or NPZ), list, show, delete.

A meta-train job names one with ``{"task": {"family": "dataset", "dataset": ID}}``. A column (NPZ: an
array) ``trusted`` of 0/1 marks trusted rows: each task's held-out side (app/services/datasets.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import delete, select

from app.api.deps import DB, READ, AdminKey, Id, PageDep, SubmitKey, reject_unknown_query
from app.api.openapi import problems
from app.api.schemas import DatasetDetailOut, DatasetPage
from app.core.errors import Problem, not_found
from app.db.models import Dataset
from app.db.session import lock_row
from app.services import datasets

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[READ])
OPTIONS = {"name", "filename", "format", "task_column", "inputs", "outputs", "task_type"}

UPLOAD_DOC = {
    "parameters": [
        {"name": "name", "in": "query", "schema": {"type": "string", "maxLength": 128},
         "description": "a label (default: the file name)"},
        {"name": "filename", "in": "query", "schema": {"type": "string"},
         "description": "the file's name, for a raw body (its extension gives the format)"},
        {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["csv", "npz"]},
         "description": "default: from the file name, the Content-Type, then the bytes"},
        {"name": "task_column", "in": "query", "schema": {"type": "string"},
         "description": "CSV: the column of task labels (default task)"},
        {"name": "inputs", "in": "query", "schema": {"type": "string"},
         "description": "comma-separated input columns (CSV default: all but task and outputs)"},
        {"name": "outputs", "in": "query", "schema": {"type": "string"},
         "description": "comma-separated output columns (CSV default: y, y1, y2, ..., y_*)"},
        {"name": "task_type", "in": "query", "schema": {"type": "string", "enum": ["regression", "classification"]},
         "description": "classification: one label column (CSV default: label; integers or strings), "
                        "NPZ: y holds the labels"},
    ],
    "requestBody": {"required": True, "description": "a CSV or NPZ file of tasks; an optional column (NPZ: "
                    "array) trusted of 0/1 marks trusted rows: the held-out side of each task (meta-objective, "
                    "meta-test scores), the other rows are trained on", "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}, **{k: {"type": "string"} for k in sorted(OPTIONS)}}}},
        "text/csv": {"schema": {"type": "string"}},
        "application/x-npz": {"schema": {"type": "string", "format": "binary"}},
    }},
}


def _save(Session, data, name: str, filename: str | None, fmt: str) -> dict:
    with Session() as db:
        row = datasets.store(db, data, name, filename, fmt)
        db.commit()
        return datasets.dataset_json(row, full=True)


@router.post("", status_code=201, summary="Upload a data set of tasks (multipart file or raw CSV/NPZ body)",
             openapi_extra=UPLOAD_DOC, response_model=DatasetDetailOut, response_model_exclude_unset=True,
             responses=problems(400, 413, 415, 429))
async def upload(request: Request, response: Response, key: SubmitKey) -> dict:
    reject_unknown_query(request, OPTIONS)
    settings = request.app.state.settings
    with request.app.state.write_slots.held(key.client, settings):  # 429 beyond max_key_writes at once
        options = dict(request.query_params)
        media_type = request.headers.get("content-type", "")
        if media_type.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=len(OPTIONS))
            file = form.get("file")
            if file is None or isinstance(file, str):
                raise datasets.bad("file", "a multipart upload sends the data in a file field named 'file'")
            if file.size is not None and file.size > settings.dataset_max_bytes:
                raise datasets.too_large("dataset_max_bytes", f"a file of {file.size} bytes, at most "
                                         f"{settings.dataset_max_bytes}")
            for field, value in form.multi_items():
                if field != "file":
                    if field not in OPTIONS or not isinstance(value, str):
                        raise datasets.bad(field, f"unknown form field; known: {sorted(OPTIONS)}")
                    options.setdefault(field, value)
            body, filename, media_type = await file.read(), file.filename, file.content_type
        else:
            body, filename = await request.body(), options.get("filename")
        name = options.get("name") or filename or "dataset"
        if len(name) > 128 or (filename is not None and len(filename) > 256):
            raise datasets.bad("name", "at most 128 characters (a file name at most 256)")
        if "\x00" in name or "\x00" in (filename or ""):
            raise datasets.bad("name", "a NUL character is not allowed in a name or file name")
        fmt, data = await run_in_threadpool(datasets.read_upload, body, options, filename, media_type, settings)
        out = await run_in_threadpool(_save, request.app.state.Session, data, name, filename, fmt)
        response.headers["Location"] = out["links"]["self"]
        return out


@router.get("", summary="List data sets, newest first", response_model=DatasetPage,
            response_model_exclude_unset=True)
def list_datasets(db: DB, page: PageDep) -> dict:
    q = select(Dataset).order_by(Dataset.id.desc()).limit(page.limit + 1)
    if page.after is not None:
        q = q.where(Dataset.id < page.after)
    return page.result(list(db.scalars(q)), lambda r: r.id, datasets.dataset_json)


@router.get("/{dataset_id}", summary="A data set: shapes, rows per task, column statistics, active jobs",
            response_model=DatasetDetailOut, response_model_exclude_unset=True)
def show(db: DB, dataset_id: Id) -> dict:
    out = datasets.dataset_json(datasets.get(db, dataset_id), full=True)
    out["active_jobs"] = datasets.jobs_using(db, dataset_id)
    return out


@router.delete("/{dataset_id}", status_code=204,
               summary="Delete a data set (409 while a job uses it, or a registered loss without force)",
               responses=problems(409))
def remove(db: DB, key: AdminKey, dataset_id: Id,
           force: Annotated[bool, Query(description="delete even though registered losses were trained on it: "
                                        "they stay usable, but can be meta-tested only on another data set")] = False,
           ) -> Response:
    # locked until the commit: a job submitted meanwhile waits, then finds no data set (422); one
    # submitted before has committed when the lock is granted, and is among the users
    if not lock_row(db, Dataset, dataset_id):
        raise not_found(f"data set {dataset_id}")
    users = datasets.jobs_using(db, dataset_id)
    if users:
        raise Problem(409, "dataset_in_use", f"data set {dataset_id} is used by queued or running jobs {users}; "
                      "cancel them or wait until they end", jobs=users)
    losses = datasets.losses_using(db, dataset_id)
    if losses and not force:  # the registry keeps every loss: the data set is what re-checks them
        shown = ", ".join(losses[:10]) + (f" and {len(losses) - 10} more" if len(losses) > 10 else "")
        raise Problem(409, "dataset_used_by_losses",
                      f"data set {dataset_id} meta-trained the registered losses {shown}; without it they can "
                      "be meta-tested only on another data set. Delete it anyway with ?force=true", losses=losses)
    db.execute(delete(Dataset).where(Dataset.id == dataset_id))
    db.commit()
    return Response(status_code=204)
