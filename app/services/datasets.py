"""Uploaded data sets: read a CSV or NPZ file of tasks, check it against the settings' limits,
store it normalised in the database, and serve it to ml3core's ``dataset`` family.

Every check runs before anything is written, so a rejected upload stores nothing. The stored
form is ``ml3core.tasks.dataset.TaskData.to_bytes()`` (safetensors: deterministic, never
unpickled); the database is the one store that the API, the embedded runner and Celery
workers on other machines all share.

CSV: a header row, one row per point. ``task_column`` (default ``task``) labels each row's
task; ``outputs`` names the output columns (default: the columns called ``y``, ``y1``, ``y2``,
... or ``y_<anything>``); ``inputs`` names the input columns (default: every other column).
NPZ: arrays ``x`` (N,) or (N, X), ``y`` (N,) or (N, Y) and ``task`` (N,) of numbers or strings.

``task_type=classification``: the one output column holds class labels (integers or strings; CSV
default column ``label``, NPZ ``y`` of shape (N,)). Refused: fewer than 2 or more than
``MAX_CLASSES`` classes, and a task whose rows are all of one class (nothing to tell apart).

Trusted rows (noisy data): a CSV column ``trusted`` (NPZ: an array ``trusted`` (N,)) of 0/1 marks
the rows a user trusts. They become each task's held-out side, so meta-training's objective and
the meta-test's scores read trusted rows only, and the inner steps train on the others. Refused:
a value that is not 0 or 1, a task with no trusted row, a task whose every row is trusted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import zipfile
from collections import Counter

import numpy as np
import torch
from sqlalchemy import select

from app.core.config import Settings
from app.core.errors import Problem, invalid, not_found
from app.db.models import FINAL, MAX_ID, META_TEST, Dataset, Job, Loss, LossVersion, iso
from app.db.session import get_sessionmaker, lock_row
from app.services.ids import is_digits
from ml3core import ConfigError
from ml3core.tasks import dataset as family

FORMATS = ("csv", "npz", "parquet")
MEDIA_TYPES = {"text/csv": "csv", "application/csv": "csv", "text/plain": "csv", "application/x-npz": "npz",
               "application/zip": "npz", "application/vnd.apache.parquet": "parquet"}
OUTPUT_NAME = re.compile(r"y([0-9]+|_.*)?")  # full match
TRUSTED = "trusted"  # the column (NPZ: array) of 0/1 markers of trusted rows


def bad(loc: str, msg: str) -> Problem:
    return invalid(loc, msg, code="invalid_dataset")


def too_large(setting: str, msg: str) -> Problem:
    return Problem(413, "too_large", f"{msg} (setting ML3_{setting.upper()})", setting=setting)


# -- reading ----------------------------------------------------------------------------------------
def detect_format(fmt: str | None, filename: str | None, media_type: str | None, body: bytes) -> str:
    """The ``format`` parameter, else the file name's extension, else the media type, else the bytes."""
    if fmt:
        if fmt not in FORMATS:
            raise bad("format", f"one of {list(FORMATS)}")
        return fmt
    ext = (filename or "").rsplit(".", 1)[-1].lower() if filename and "." in filename else ""
    if ext in FORMATS:
        return ext
    media = (media_type or "").split(";")[0].strip().lower()
    if media in MEDIA_TYPES:
        return MEDIA_TYPES[media]
    if body[:4] == b"PK\x03\x04":
        return "npz"
    return "parquet" if body[:4] == b"PAR1" else "csv"


def _names(text: str | None, loc: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise bad(loc, "comma-separated column names")
    return names


def read_csv(body: bytes, task_column: str, inputs: list[str] | None, outputs: list[str] | None,
             settings: Settings, classification: bool = False) -> family.TaskData:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise bad("file", f"a CSV file must be UTF-8 text ({e.reason} at byte {e.start})") from None
    if "\x00" in text:  # the csv module reads it, PostgreSQL's text cannot hold it (labels are stored)
        raise bad("file", f"line {text.count(chr(10), 0, text.index(chr(0))) + 1}: a NUL character")
    # newline="": CR, LF and CRLF all end a row; a quoted field may hold any of them
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = _csv_rows(reader)
    header = next(rows, None)
    if not header or not any(h.strip() for h in header):
        raise bad("file", "empty: a CSV file starts with a header row of column names")
    header = [h.strip() for h in header]
    seen = Counter(header)  # linear: a header may hold millions of names before the column limit is checked
    dupes = sorted(h for h, k in seen.items() if k > 1)
    if dupes or "" in header:
        raise bad("header", f"column names must be unique and non-empty; repeated: {dupes}")
    if task_column not in header:
        raise bad("task_column", f"no column {task_column!r} in the header {header}; name it with ?task_column=")
    marked = TRUSTED in seen and task_column != TRUSTED
    for loc, cols in (("inputs", inputs), ("outputs", outputs)):
        if marked and cols and TRUSTED in cols:
            raise bad(loc, f"column {TRUSTED!r} marks trusted rows (0/1); it is neither an input nor an output")
    if classification:
        outputs = outputs or ["label"]
        if len(outputs) != 1 or outputs[0] not in seen or outputs[0] == task_column:
            raise bad("outputs", f"classification reads one label column (default label) of the header {header}; "
                      "name it with ?outputs=")
    if outputs is None:
        outputs = [h for h in header if OUTPUT_NAME.fullmatch(h) and h != task_column and not (marked and h == TRUSTED)]
        if not outputs:
            raise bad("outputs", "no output column: call them y, y1, y2, ... or name them with ?outputs=a,b")
    if inputs is None:
        output_set = set(outputs)
        inputs = [h for h in header if h != task_column and h not in output_set and not (marked and h == TRUSTED)]
    for loc, cols in (("inputs", inputs), ("outputs", outputs)):
        missing = [c for c in cols if c not in seen or c == task_column]
        if missing or not cols:
            raise bad(loc, f"columns {missing or cols} are not numeric columns of the header {header}")
    if set(inputs) & set(outputs):
        raise bad("outputs", f"columns both input and output: {sorted(set(inputs) & set(outputs))}")
    if len(inputs) + len(outputs) > settings.dataset_max_columns:
        raise too_large("dataset_max_columns", f"{len(inputs) + len(outputs)} columns, at most "
                        f"{settings.dataset_max_columns}")
    at = {h: i for i, h in enumerate(header)}
    xi, yi, ti = [at[c] for c in inputs], [at[c] for c in outputs], at[task_column]
    xs, ys, labels, lines, trusted = [], [], [], [], []
    for row in rows:
        line = reader.line_num
        if not row or all(not v.strip() for v in row):
            continue
        if len(row) != len(header):
            raise bad("file", f"line {line}: {len(row)} fields, the header has {len(header)}")
        if len(labels) == settings.dataset_max_rows:
            raise too_large("dataset_max_rows", f"more than {settings.dataset_max_rows} rows")
        labels.append(row[ti])
        lines.append(line)
        if marked:
            trusted.append(_marker(row[at[TRUSTED]], f"line {line}"))
        xs.append([_number(row[i], line, header[i]) for i in xi])
        if classification:
            ys.append(row[yi[0]])
        else:
            ys.append([_number(row[i], line, header[i]) for i in yi])
    if not labels:
        raise bad("file", "no data rows after the header")
    labels = clean_labels(labels, task_column, "task label", lambda i: f"line {lines[i]}")
    marks = trusted if marked else None
    if classification:
        ys = clean_labels(ys, outputs[0], "class label", lambda i: f"line {lines[i]}")
        return _class_data(xs, ys, labels, inputs, outputs[0], marks)
    return _task_data(xs, ys, labels, inputs, outputs, marks)


def _marker(text: str, where: str) -> bool:
    """A trusted marker: 0 or 1 (also written 0.0, 1.0); anything else is a 422 naming the row."""
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        number = None
    if number not in (0.0, 1.0):
        raise bad(TRUSTED, f"{where}: {value!r}; a trusted marker is 0 or 1")
    return number == 1.0


def clean_labels(values: list, loc: str, what: str, where=lambda i: f"row {i + 1}") -> list[str]:
    """Task or class labels of CSV and NPZ alike: text without surrounding spaces, never empty, no NUL
    (PostgreSQL's text cannot hold one, and the labels are stored)."""
    out = [str(v).strip() for v in values]
    for i, label in enumerate(out):
        if not label or "\x00" in label:
            raise bad(loc, f"{where(i)}: {'an empty' if not label else 'a NUL character in a'} {what}")
    return out


def _csv_rows(reader):
    """The reader's rows; what the csv module refuses (a field over its size limit, a NUL, a stray
    quote) is a 422 naming the line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise bad("file", f"line {reader.line_num}: not readable as CSV ({e})") from None
        yield row


def _number(text: str, line: int, column: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise bad(column, f"line {line}: {text.strip()!r} is not a number") from None
    if not math.isfinite(v):
        raise bad(column, f"line {line}: {text.strip()} is not finite (NaN and infinity are refused)")
    return v


def read_npz(body: bytes, inputs: list[str] | None, outputs: list[str] | None,
             settings: Settings, classification: bool = False) -> family.TaskData:
    try:
        members = zipfile.ZipFile(io.BytesIO(body)).infolist()
    except zipfile.BadZipFile:
        raise bad("file", "not an NPZ file (a zip of .npy arrays, as numpy.savez writes)") from None
    names = {m.filename for m in members}
    if not {"x.npy", "y.npy", "task.npy"} <= names or names - {"x.npy", "y.npy", "task.npy", f"{TRUSTED}.npy"}:
        raise bad("file", f"an NPZ file holds exactly the arrays x, y and task (and optionally {TRUSTED}); this one "
                  f"has {sorted(names)}")
    unpacked = sum(m.file_size for m in members)  # checked before anything is decompressed
    if unpacked > settings.dataset_max_bytes:
        raise too_large("dataset_max_bytes", f"arrays of {unpacked} bytes, at most {settings.dataset_max_bytes}")
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as z:
            x, y, task = z["x"], z["y"], z["task"]
            marks = z[TRUSTED] if f"{TRUSTED}.npy" in names else None
    except ValueError as e:  # object arrays need pickle, which is never used
        raise bad("file", f"arrays of numbers (task labels may be strings) only: {e}") from None
    except Exception as e:
        raise bad("file", f"unreadable NPZ file: {type(e).__name__}: {e}") from None
    for loc, a, dims in (("x", x, (1, 2)), ("y", y, (1, 2)), ("task", task, (1,))):
        if a.ndim not in dims or a.shape[0] == 0:
            raise bad(loc, f"{'(N,)' if dims == (1,) else '(N,) or (N, columns)'} with N > 0, got shape {a.shape}")
        if loc == "y" and classification:
            if a.ndim != 1 or a.dtype.kind not in "biuU":
                raise bad("y", f"classification: (N,) integer or string class labels, got {a.dtype} {a.shape}")
        elif loc != "task" and a.dtype.kind not in "biuf":
            raise bad(loc, f"numbers, got dtype {a.dtype}")
    if task.dtype.kind not in "biuU":
        raise bad("task", f"integer or string labels, got dtype {task.dtype}")
    if not (len(x) == len(y) == len(task)):
        raise bad("y", f"x, y and task need one row per point: {len(x)}, {len(y)}, {len(task)} rows")
    if marks is not None:
        if marks.shape != (len(x),) or marks.dtype.kind not in "biuf":
            raise bad(TRUSTED, f"one 0/1 marker per row: ({len(x)},) numbers, got {marks.dtype} {marks.shape}")
        wrong = np.flatnonzero((marks != 0) & (marks != 1))
        if len(wrong):
            raise bad(TRUSTED, f"row {wrong[0] + 1}: {marks[wrong[0]]!r}; a trusted marker is 0 or 1 "
                      f"({len(wrong)} rows are neither)")
        marks = marks == 1
    if len(x) > settings.dataset_max_rows:
        raise too_large("dataset_max_rows", f"{len(x)} rows, at most {settings.dataset_max_rows}")
    if classification:
        x2 = x.reshape(len(x), -1)
        if x2.shape[1] + 1 > settings.dataset_max_columns:
            raise too_large("dataset_max_columns", f"{x2.shape[1] + 1} columns, at most {settings.dataset_max_columns}")
        output = (outputs or ["label"])[0]
        return _class_data(x2.astype(np.float64), clean_labels(y.tolist(), "y", "class label"),
                           clean_labels(task.tolist(), "task", "task label"), inputs, output, marks)
    x2, y2 = x.reshape(len(x), -1), y.reshape(len(y), -1)
    if x2.shape[1] + y2.shape[1] > settings.dataset_max_columns:
        raise too_large("dataset_max_columns", f"{x2.shape[1] + y2.shape[1]} columns, at most "
                        f"{settings.dataset_max_columns}")
    for loc, names_, a in (("inputs", inputs, x2), ("outputs", outputs, y2)):
        if names_ is not None and len(names_) != a.shape[1]:
            raise bad(loc, f"{len(names_)} names for {a.shape[1]} columns")
    return _task_data(x2.astype(np.float64), y2.astype(np.float64), clean_labels(task.tolist(), "task", "task label"),
                      inputs, outputs, marks)


def _trusted(marks) -> torch.Tensor | None:
    return None if marks is None else torch.as_tensor(np.asarray(marks, dtype=bool))


def _task_data(x, y, labels, inputs, outputs, marks=None) -> family.TaskData:
    try:
        return family.TaskData.from_labels(torch.as_tensor(np.asarray(x, dtype=np.float64)),
                                           torch.as_tensor(np.asarray(y, dtype=np.float64)),
                                           labels, inputs, outputs, _trusted(marks))
    except ConfigError as e:  # e.g. NaN in an NPZ array: the message names row and column
        raise bad(e.loc, e.msg) from None


def _class_data(x, classes, tasks, inputs, output: str, marks=None) -> family.TaskData:
    names = set(map(str, classes))
    if len(names) > family.MAX_CLASSES:
        raise bad(output, f"{len(names)} classes; at most {family.MAX_CLASSES} (one logit each)")
    if len(names) < 2:
        raise bad(output, f"one class ({sorted(names)}): classification needs at least 2")
    try:
        data = family.TaskData.from_class_labels(torch.as_tensor(np.asarray(x, dtype=np.float64)), classes, tasks,
                                                 inputs, output, _trusted(marks))
    except ConfigError as e:
        raise bad(e.loc, e.msg) from None
    single = [n for n, row in zip(data.names, data.class_counts(), strict=True) if sum(k > 0 for k in row) < 2]
    if single:
        raise bad(output, f"every task needs rows of at least 2 classes; {len(single)} task(s) have one: "
                  f"{', '.join(map(repr, single[:5]))}")
    return data


def check_sizes(data: family.TaskData, settings: Settings) -> None:
    """Enough tasks with enough rows each to split into meta-train / validation / test and to
    hold out points inside every task; not more than the server takes."""
    tasks, counts = len(data.names), data.counts()
    if tasks > settings.dataset_max_tasks:
        raise too_large("dataset_max_tasks", f"{tasks} tasks, at most {settings.dataset_max_tasks}")
    if tasks < settings.dataset_min_tasks:
        raise bad("task", f"{tasks} tasks; at least {settings.dataset_min_tasks} are needed (meta-train, "
                  "meta-validation and meta-test tasks are different tasks)")
    small = [(n, k) for n, k in zip(data.names, counts, strict=True) if k < settings.dataset_min_task_rows]
    if small:
        listed = ", ".join(f"{n!r} ({k})" for n, k in small[:5])
        raise bad("task", f"every task needs at least {settings.dataset_min_task_rows} rows; "
                  f"{len(small)} of {tasks} tasks have fewer: {listed}")
    try:
        data.check_trusted()  # trusted rows and untrusted rows in every task: whatever the split, none is empty
    except ConfigError as e:
        raise bad(e.loc, e.msg) from None


def read_upload(body: bytes, options: dict, filename: str | None, media_type: str | None,
                settings: Settings) -> tuple[str, family.TaskData]:
    """(format, data) of an uploaded file, or a 4xx Problem. ``options``: the request's parameters."""
    if len(body) > settings.dataset_max_bytes:
        raise too_large("dataset_max_bytes", f"a file of {len(body)} bytes, at most {settings.dataset_max_bytes}")
    if not body:
        raise bad("file", "empty upload")
    fmt = detect_format(options.get("format"), filename, media_type, body)
    inputs, outputs = _names(options.get("inputs"), "inputs"), _names(options.get("outputs"), "outputs")
    task_type = options.get("task_type") or "regression"
    if task_type not in ("regression", "classification"):
        raise bad("task_type", "regression or classification")
    classification = task_type == "classification"
    if fmt == "parquet":
        raise Problem(415, "unsupported_format", "Parquet is not read by this server; upload CSV or NPZ")
    if fmt == "npz":
        data = read_npz(body, inputs, outputs, settings, classification)
    else:
        data = read_csv(body, options.get("task_column") or "task", inputs, outputs, settings, classification)
    check_sizes(data, settings)
    return fmt, data


# -- storing and serving ----------------------------------------------------------------------------
def store(db, data: family.TaskData, name: str, filename: str | None, fmt: str) -> Dataset:
    blob = data.to_bytes()
    row = Dataset(name=name, filename=filename, format=fmt, sha256=hashlib.sha256(blob).hexdigest(),
                  size=len(blob), summary=data.summary(), data=blob)
    db.add(row)
    db.flush()
    return row


def get(db, dataset_id: int) -> Dataset:
    row = db.get(Dataset, dataset_id)
    if row is None:
        raise not_found(f"data set {dataset_id}")
    return row


def dataset_json(row: Dataset, full: bool = False) -> dict:
    s = row.summary
    out = {"id": row.id, "name": row.name, "filename": row.filename, "format": row.format, "sha256": row.sha256,
           "size": row.size, "created_at": iso(row.created_at), "rows": s["rows"], "tasks": s["tasks"],
           "x_dim": s["x_dim"], "y_dim": s["y_dim"], "inputs": s["inputs"], "outputs": s["outputs"],
           "task_type": s.get("task_type", "regression"), "links": {"self": f"/v1/datasets/{row.id}"}}
    if "classes" in s:
        out["classes"] = s["classes"]
    if "trusted_rows" in s:
        out["trusted_rows"] = s["trusted_rows"]
    if full:
        out.update({k: s[k] for k in ("task_rows", "min_task_rows", "max_task_rows", "stats")})
        if "task_trusted_rows" in s:
            out["task_trusted_rows"] = s["task_trusted_rows"]
    return out


def dataset_of(db, job: Job) -> int | None:
    """The data set a job reads: a meta-train job's task, or for a meta-test job the task of the
    loss it tests, with the job's own task settings over it (another data set, another family)."""
    if job.kind == META_TEST:
        spec = db.get(LossVersion, job.loss_version_id).spec if job.loss_version_id else {}
        task = {**spec.get("task", {}), **((job.plan.get("spec") or {}).get("task") or {})}
    else:
        task = job.plan.get("task")
    if not task or task.get("family") != "dataset":
        return None
    return dataset_id(task.get("dataset"))


def dataset_id(name) -> int | None:
    """The row id that ``task.dataset`` names, or None: digits only, within the id column's range (a
    larger number would overflow the database's integer, a 500 instead of a 4xx)."""
    text = str(name)
    if not is_digits(text) or not 1 <= int(text) <= MAX_ID:
        return None
    return int(text)


def jobs_using(db, dataset_id: int) -> list[int]:
    """Queued or running jobs that read the data set."""
    jobs = db.scalars(select(Job).where(Job.status.not_in(FINAL)).order_by(Job.id))
    return [job.id for job in jobs if dataset_of(db, job) == dataset_id]


def losses_using(db, dataset_id: int) -> list[str]:
    """Registered loss versions (``name:version``) meta-trained on the data set: only it can
    meta-test them as they were trained."""
    rows = db.execute(select(Loss.name, LossVersion.version, LossVersion.spec).join(Loss)
                      .order_by(Loss.name, LossVersion.version))
    return [f"{name}:{version}" for name, version, spec in rows
            if (spec.get("task") or {}).get("family") == "dataset"
            and str((spec.get("task") or {}).get("dataset")) == str(dataset_id)]


def lock_for_job(db, job: Job) -> None:
    """Lock the data set a new job reads (shared) until the job is committed, or refuse the job if it
    is gone: a delete, which locks it exclusively, then either finished first or sees the job."""
    dataset_id = dataset_of(db, job)
    if dataset_id is not None and not lock_row(db, Dataset, dataset_id, shared=True):
        raise _no_dataset(dataset_id)


def load(db_url: str, name: str) -> family.TaskData:
    """ml3core's loader: ``task.dataset`` is a data set id of this database."""
    row_id = dataset_id(name)
    if row_id is None:
        raise ConfigError("task.dataset", f"a data set id (from POST /v1/datasets: 1 to {MAX_ID}), got {name!r}")
    with get_sessionmaker(db_url)() as db:
        blob = db.scalar(select(Dataset.data).where(Dataset.id == row_id))
    if blob is None:
        raise _no_dataset(name)
    return family.TaskData.from_bytes(blob)


def _no_dataset(name) -> ConfigError:
    return ConfigError("task.dataset", f"no data set {name}; upload one with POST /v1/datasets")


def use_database(db_url: str) -> None:
    """Let the ``dataset`` family of this process read data sets from ``db_url``."""
    family.set_loader(lambda name: load(db_url, name))
