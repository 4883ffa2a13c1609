"""Request bodies and response shapes of the API (pydantic). Job specs themselves are checked by
``ml3core.api.parse_spec``, which knows every task family's fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app.db.models import MAX_ID, Job, LossVersion, iso
from ml3core.schema import job_spec_schema

STRICT = ConfigDict(extra="forbid")


def _with_spec_keys(schema: dict) -> None:
    """JobSpec's JSON Schema (OpenAPI, ``GET /v1/schemas/job-spec``): ``kind`` and ``register_as`` over every
    key of ml3core.schema's meta-train spec. It documents; parse_spec stays the validator."""
    spec = job_spec_schema()
    schema.update(required=spec["required"], additionalProperties=False,
                  properties={**spec["properties"], **{k: schema["properties"][k] for k in ("kind", "register_as")}},
                  examples=[{"kind": "meta-train", "task": {"family": "sine"}, "loss": {"hidden": [50, 50]},
                             "seeds": 5, "outer_iterations": 500, "inner_steps": 1, "device": "cpu",
                             "register_as": "my-loss"}])


class JobSpec(BaseModel):
    """A meta-train job: every key of its JSON Schema is accepted and checked by the engine (parse_spec);
    unknown ones are rejected."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_with_spec_keys)

    kind: Literal["meta-train"] = "meta-train"
    task: dict[str, Any]
    register_as: str | None = Field(None, description="registry name; default: the task family's name")


class SweepSpec(BaseModel):
    """A sweep: trials of ``base`` (a meta-train spec) at settings from ``space``, each a meta-train job on
    the queues; the best on meta-validation tasks (worst ratio against the tuned baseline over ``horizons``)
    is registered as ``register_as``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "kind": "sweep", "base": {"task": {"family": "sine"}, "preset": "paper", "seeds": 2},
        "space": {"outer_lr": [0.001, 0.01], "inner_steps": [1, 5]}, "trials": 4, "sampler": "grid",
        "register_as": "my-loss"}]})

    kind: Literal["sweep"]
    base: dict[str, Any] = Field(description="a meta-train spec (without register_as)")
    space: dict[str, Any] = Field(description="dotted spec keys: a list of choices, or {low, high, log} (random, tpe)")
    trials: int = Field(strict=True, ge=1, description="trials to run (ML3_MAX_SWEEP_TRIALS)")
    sampler: Literal["grid", "random", "tpe"] = "grid"
    seed: int = Field(0, strict=True, ge=0, le=2**31 - 1, description="of the random and tpe samplers")
    parallel: int | None = Field(None, strict=True, ge=1, description="trials in flight at once (default: all; "
                                 "tpe: 2, so later trials learn from earlier ones)")
    horizons: list[Annotated[int, Field(strict=True, ge=1)]] | None = Field(
        None, description="meta-validation horizons the score takes the worst ratio over (default: all of them)")
    register_as: str | None = Field(None, description="registry name of the best trial's loss (default: the family)")


def _job_kind(body) -> str:
    return body.get("kind", "meta-train") if isinstance(body, dict) else "meta-train"


# POST /v1/jobs: a meta-train job, or a sweep of them (by "kind")
JobBody = Annotated[Annotated[JobSpec, Tag("meta-train")] | Annotated[SweepSpec, Tag("sweep")],
                    Discriminator(_job_kind)]


# integers of a body are JSON integers (strict: not "3", 3.0 or true), within what the run can take:
# a seed id beyond MAX_SEED would overflow the seeds of the engine's generators when the job runs
MAX_SEED = 2**32 - 1
Count = Annotated[int, Field(strict=True, ge=0)]
SeedId = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]


class MetaTestRequest(BaseModel):
    model_config = STRICT

    task: dict[str, Any] | None = Field(None, description="overrides of the loss's task settings")
    seeds: Count | list[SeedId] | None = Field(None, description=f"a count, or a list of seed ids (0 to {MAX_SEED})")
    tasks: Count | None = None
    steps: Count | None = None
    lr: float | None = None
    horizons: list[Count] | None = None
    lr_factors: list[float] | None = Field(None, description="multiples of the lr the plain loss also trains at; "
                                           "the best per horizon is the tuned baseline (default: 0.1 ... 46)")
    tune_learned: bool | None = Field(None, description="the learned loss at its best lr factor too (default true)")
    device: str = Field("cpu", description="cpu, cuda or cuda:N (see the README on devices)")


class EvaluateRequest(BaseModel):
    """Arrays are JSON numbers/lists or base64 strings of little-endian float32 (fast for big batches)."""

    model_config = STRICT

    pred: Any = Field(None, description="(N,) or (N, D) predictions (regression losses)")
    target: Any = Field(None, description="targets, the shape of pred")
    logits: Any = Field(None, description="(N, C) logits, for classification losses (base64: give shape)")
    labels: Any = Field(None, description="(N,) class indices or (N, C) one-hot/soft targets (base64: the "
                        "logits' shape), with logits")
    x: Any = Field(None, description="inputs (N,) or (N, X), for losses that read them")
    shape: list[int] | None = Field(None, description="shape of base64 pred/target/logits (default: 1-D)")
    reduction: Literal["mean", "sum", "none"] = "mean"
    return_grad: bool = False
    encoding: Literal["json", "base64"] = Field("json", description="how arrays in the response are sent")


class AliasRequest(BaseModel):
    model_config = STRICT
    version: int = Field(strict=True, ge=1, le=MAX_ID)


class TagRequest(BaseModel):
    model_config = STRICT
    value: str = Field(max_length=256)


class LossPatch(BaseModel):
    """What ``PATCH /v1/losses/{id}`` may change on a version: its description (null or "" removes it)."""

    model_config = STRICT
    description: str | None = Field(
        max_length=20_000, description="markdown: what the loss is for, how it was judged (a model card)",
        examples=["Sine regression, beats tuned MSE to 5000 steps."])


def job_json(job: Job, files: list[str] | None = None) -> dict:
    out = {
        "id": job.id, "kind": job.kind, "status": job.status, "spec": job.spec,
        "progress": {"completed": job.progress_completed, "total": job.progress_total,
                     "unit": job.progress_unit},
        "metrics": job.metrics, "error": job.error, "result": job.result, "attempts": job.attempts,
        "cancel_requested": job.cancel_requested, "created_at": iso(job.created_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "links": {"self": f"/v1/jobs/{job.id}", "events": f"/v1/jobs/{job.id}/events",
                  "metrics": f"/v1/jobs/{job.id}/metrics"},
    }
    if files is not None:
        if "report.json" in files:
            out["links"]["report"] = f"/v1/jobs/{job.id}/report"
        out["links"]["figures"] = {n: f"/v1/jobs/{job.id}/figures/{n}" for n in files if n.endswith(".png")}
    return out


def example(value: dict) -> ConfigDict:
    """A response model's config with one example answer (shown by /docs and /redoc)."""
    return ConfigDict(json_schema_extra={"examples": [value]})


JOB_EXAMPLE = {
    "id": 1, "kind": "meta-train", "status": "running",
    "spec": {"kind": "meta-train", "task": {"family": "sine"}, "seeds": 2, "register_as": "my-loss"},
    "progress": {"completed": 120, "total": 500, "unit": "iterations"},
    "metrics": {"iteration": 120, "phase": "meta-train", "mse_heldout": 1.93}, "error": None, "result": None,
    "attempts": 1, "cancel_requested": False, "created_at": "2026-01-05T10:00:00Z",
    "started_at": "2026-01-05T10:00:01Z", "finished_at": None,
    "links": {"self": "/v1/jobs/1", "events": "/v1/jobs/1/events", "metrics": "/v1/jobs/1/metrics"}}


class JobProgress(BaseModel):
    completed: int
    total: int
    unit: str


class JobOut(BaseModel):
    """A job as ``job_json`` renders it: the answer to a submit (the fields in this order)."""

    model_config = example(JOB_EXAMPLE)

    id: int
    kind: str
    status: str
    spec: dict[str, Any] = Field(description="the request as submitted")
    progress: JobProgress
    metrics: dict[str, Any] | None = Field(description="the latest metrics")
    error: dict[str, Any] | None = Field(description="{code, detail} of a failed job")
    result: dict[str, Any] | None
    attempts: int
    cancel_requested: bool
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    links: dict[str, Any] = Field(description="self, events, metrics")


VERSION_EXAMPLE = {
    "id": "my-loss:1", "name": "my-loss", "version": 1, "sha256": "9f2c…", "status": "ready", "job_id": 1,
    "created_at": "2026-01-05T10:20:00Z", "aliases": ["production"], "tags": {"owner": "alice"},
    "description": "Sine regression; beats tuned MSE to 5000 steps.", "metrics": {"seed": 0},
    "verdict": "beats a tuned baseline at 1000, 5000 steps",
    "architecture": {"type": "mlp", "form": "weighted_se", "inputs": ["target", "x"], "hidden": [32]},
    "task": {"family": "sine"}, "training": {"inner_lr": 0.001, "recommended_lr": 0.002},
    "versions": {"torch": "2.13.0+cpu", "ml3": "0.1.0", "python": "3.11.7"},
    "links": {"self": "/v1/losses/my-loss:1", "artifact": "/v1/losses/my-loss:1/artifact",
              "evaluate": "/v1/losses/my-loss:1/evaluate", "landscape": "/v1/losses/my-loss:1/landscape",
              "meta_test": "/v1/losses/my-loss:1/meta-test"}}


class LossVersionOut(BaseModel):
    """A loss version as ``version_json`` renders it (the fields in this order)."""

    model_config = example(VERSION_EXAMPLE)

    id: str = Field(description="name:version")
    name: str
    version: int
    sha256: str
    status: str
    job_id: int | None
    created_at: str | None
    aliases: list[str]
    tags: dict[str, str]
    description: str | None = Field(description="markdown, set by PATCH (None: none yet)")
    metrics: dict[str, Any] | None
    verdict: Any = Field(description="where the loss beats the plain loss at its best lr (None: an older version)")
    architecture: Any
    task: Any
    training: Any
    versions: dict[str, str] | None = Field(description="torch, ml3 and Python versions that wrote the bundle "
                                                        "(None: a bundle written before they were recorded)")
    links: dict[str, str]


class SweepTrialOut(BaseModel):
    """One trial of a sweep (app.services.sweeps.trial_json)."""

    trial: int = Field(description="the trial's index in the sweep, in the order trials were created")
    id: int = Field(description="the trial's own job id")
    status: str
    params: dict[str, Any] = Field(description="the setting of each swept key")
    score: float | None = Field(description="worst meta-validation ratio against the tuned baseline (lower is "
                                            "better; None: not finished)")
    ratios: dict[str, Any] = Field(description="the ratio at each horizon")
    error: dict[str, Any] | None
    started_at: str | None
    finished_at: str | None
    links: dict[str, str]


class JobDetailOut(JobOut):
    """A job with its latest checkpoint; ``links`` add ``report`` and ``figures`` once it has them; a sweep
    adds its ``trials`` and its ``leaderboard`` (trial indices, best first)."""

    model_config = example({**JOB_EXAMPLE, "checkpoint": 100})
    checkpoint: int | None = Field(description="the meta-iteration of the latest checkpoint (None: none yet)")
    trials: list[SweepTrialOut] | None = Field(None, description="a sweep's trials (sweeps only)")
    leaderboard: list[int] | None = Field(None, description="a sweep's trial indices, best first (sweeps only)")


class JobPage(BaseModel):
    model_config = example({"items": [JOB_EXAMPLE], "next_cursor": "MQ=="})
    items: list[JobOut]
    next_cursor: str | None = Field(description="?cursor= of the next page (None: the last page)")


class JobMetricsOut(BaseModel):
    model_config = example({"job_id": 1, "items": [{"iteration": 10, "mse_heldout": 2.5},
                                                   {"iteration": 20, "mse_heldout": 2.1}]})
    job_id: int
    items: list[dict[str, Any]] = Field(description="one entry per evaluation, oldest first")


class LossSummaryOut(BaseModel):
    """A registered loss in a list: its latest version's family, verdict and description, and its aliases."""

    name: str
    latest_version: int | None
    created_at: str | None
    latest_verdict: Any = Field(description="the latest version's verdict (None: an older version)")
    family: str | None
    description: str | None
    aliases: dict[str, int] = Field(description="alias -> version")
    links: dict[str, str]


class LossPage(BaseModel):
    model_config = example({"items": [{
        "name": "my-loss", "latest_version": 2, "created_at": "2026-01-05T10:20:00Z",
        "latest_verdict": "beats a tuned baseline at 1000, 5000 steps", "family": "sine", "description": None,
        "aliases": {"production": 1},
        "links": {"self": "/v1/losses/my-loss", "versions": "/v1/losses/my-loss/versions"}}], "next_cursor": None})
    items: list[LossSummaryOut]
    next_cursor: str | None


class VersionPage(BaseModel):
    model_config = example({"items": [VERSION_EXAMPLE], "next_cursor": None})
    items: list[LossVersionOut] = Field(description="newest first; a version whose stored spec no longer "
                                                    "parses shows with status corrupt")
    next_cursor: str | None


class AliasesOut(BaseModel):
    model_config = example({"name": "my-loss", "aliases": {"production": 1, "staging": 2}})
    name: str
    aliases: dict[str, int] = Field(description="alias -> version")


class AliasOut(BaseModel):
    model_config = example({"name": "my-loss", "alias": "production", "version": 1, "id": "my-loss@production"})
    name: str
    alias: str
    version: int
    id: str = Field(description="the loss id that follows the alias")


class TagsOut(BaseModel):
    model_config = example({"id": "my-loss:1", "tags": {"owner": "alice"}})
    id: str
    tags: dict[str, str]


# an array of the answer: a number (reduced), a list (reduction none; rows of a per-output loss), or base64
# little-endian float32 with "encoding": "base64"
Values = float | list[float] | list[list[float]] | str


class EvaluateOut(BaseModel):
    model_config = example({"loss": 0.4127, "id": "my-loss:1", "sha256": "9f2c…", "n": 2, "grad": [0.11, -0.23]})
    loss: Values = Field(description="the loss: a number, or per point with reduction none")
    id: str = Field(description="the version evaluated (name:version)")
    sha256: str
    n: int = Field(description="points (rows) evaluated")
    grad: Values | None = Field(None, description="d loss / d pred (or logits), the shape of pred: with return_grad")


class LandscapeOut(BaseModel):
    """The loss over a grid, beside the plain loss; families add their own fields (targets, v, classes, ...)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "my-loss:1", "kind": "prediction", "grid": [-1.0, 0.0, 1.0], "xlabel": "prediction",
        "targets": [0.0], "curves": {"learned, target=0": [0.9, 0.0, 1.1], "MSE, target=0": [1.0, 0.0, 1.0]},
        "markers": [0.0], "title": "Learned loss vs MSE"}]})
    id: str
    kind: str = Field(description="prediction, margin (classification), residual (inverse dynamics) or parameter")
    grid: list[float]
    xlabel: str
    curves: dict[str, list[float]] = Field(description="name -> the curve's values on the grid")
    markers: list[float]
    title: str


class ReportOut(BaseModel):
    """A finished job's report: a meta-train job's (spec, history, validation, meta_test, published_seed,
    verdict, warnings, data) or a meta-test job's (the horizon report, optimizee, data, loss_sha256)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "spec": {"task": {"family": "sine"}}, "published_seed": 0, "verdict": "beats a tuned baseline at 100",
        "warnings": [], "meta_test": {"steps": 100, "horizon": [{"steps": 100, "ratio_vs_tuned_per_seed": [0.8]}]}}]})
    warnings: list[str] | None = Field(None, description="where the loss loses to the tuned baseline")


class DatasetOut(BaseModel):
    """A data set in a list; ``classes`` (classification) and ``trusted_rows`` appear where the data has them."""

    id: int
    name: str
    filename: str | None
    format: str
    sha256: str
    size: int = Field(description="bytes uploaded")
    created_at: str | None
    rows: int
    tasks: int
    x_dim: int
    y_dim: int
    inputs: list[str]
    outputs: list[str]
    task_type: Literal["regression", "classification"]
    links: dict[str, str]
    classes: list[int | str] | None = Field(None, description="the class labels, sorted (classification)")
    trusted_rows: int | None = Field(None, description="rows marked trusted (column trusted)")


DATASET_EXAMPLE = {
    "id": 1, "name": "sensors", "filename": "tasks.csv", "format": "csv", "sha256": "41d0…", "size": 18234,
    "created_at": "2026-01-05T09:00:00Z", "rows": 442, "tasks": 18, "x_dim": 9, "y_dim": 1,
    "inputs": ["age", "bmi"], "outputs": ["y"], "task_type": "regression", "links": {"self": "/v1/datasets/1"}}


class DatasetPage(BaseModel):
    model_config = example({"items": [DATASET_EXAMPLE], "next_cursor": None})
    items: list[DatasetOut]
    next_cursor: str | None


class DatasetDetailOut(DatasetOut):
    """A data set with rows per task and per-column statistics (and, from ``GET``, the jobs that read it)."""

    model_config = example({**DATASET_EXAMPLE, "task_rows": {"sex1 age45-49": 25}, "min_task_rows": 13,
                            "max_task_rows": 43, "stats": {"inputs": {"age": {"mean": 48.5, "std": 13.1,
                                                                             "min": 19.0, "max": 79.0}},
                                                           "outputs": {}}, "active_jobs": []})
    task_rows: dict[str, int]
    min_task_rows: int
    max_task_rows: int
    stats: dict[str, dict[str, dict[str, float]]] = Field(description="inputs/outputs -> column -> mean, std, "
                                                                       "min, max")
    task_trusted_rows: dict[str, int] | None = Field(None, description="trusted rows per task")
    active_jobs: list[int] | None = Field(None, description="queued or running jobs that read it (GET only)")


class JsonSchemaOut(BaseModel):
    """A JSON Schema (draft 2020-12) of an object: its keys are ``properties``, each with a description."""

    model_config = ConfigDict(extra="allow", **example({
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "title": "JobSpec",
        "required": ["task"], "additionalProperties": False,
        "properties": {"seeds": {"type": "integer", "description": "independent seeds, trained in one batched pass"},
                       "schedule": {"type": "string", "description": "unrolled, online or persistent",
                                    "enum": ["unrolled", "online", "persistent"]}}}))

    type: Literal["object"]
    title: str
    required: list[str]
    properties: dict[str, dict[str, Any]]


class HealthOut(BaseModel):
    model_config = example({"status": "ok"})
    status: Literal["ok"]


class ReadyOut(BaseModel):
    model_config = example({"status": "ready", "runner": "local"})
    status: Literal["ready"]
    runner: str = Field(description="ML3_RUNNER: local, celery or none")


def accepted(response: Response, job: Job) -> dict:
    """The answer to a submit: 202, Location: the job, and the job."""
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_json(job)


def version_json(name: str, v: LossVersion, aliases: list[str] = (), listed: bool = False) -> dict:
    """A version; one whose stored loss.json no longer parses is refused (bundle_corrupt), or in a list
    (``listed``) shown with status ``corrupt``, so one damaged row does not break the list."""
    from app.services.registry import corrupt, readable

    ref = f"{name}:{v.version}"
    base = f"/v1/losses/{ref}"
    spec, status = v.spec, v.status
    if not readable(spec):
        if not listed:
            raise corrupt(name, v.version, "its loss.json no longer parses as a JSON object")
        spec, status = {}, "corrupt"
    return {
        "id": ref, "name": name, "version": v.version, "sha256": v.sha256, "status": status,
        "job_id": v.job_id, "created_at": iso(v.created_at), "aliases": sorted(aliases),
        "tags": {t.key: t.value for t in v.tags}, "description": v.description, "metrics": v.metrics,
        # where the loss beats the plain loss at its best lr on meta-validation tasks (None: an older version)
        "verdict": (v.metrics or {}).get("verdict"),
        "architecture": spec.get("architecture"), "task": spec.get("task"), "training": spec.get("training"),
        "versions": spec.get("versions"),
        "links": {"self": base, "artifact": f"{base}/artifact", "evaluate": f"{base}/evaluate",
                  "landscape": f"{base}/landscape", "meta_test": f"{base}/meta-test"},
    }
