"""Request bodies and response shapes of the API (pydantic). Job specs themselves are checked by
``ml3core.api.parse_spec``, which knows every task family's fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app.db.models import MAX_ID, Job, LossVersion, iso

STRICT = ConfigDict(extra="forbid")


class JobSpec(BaseModel):
    """A meta-train job. More fields (every TrainConfig field, ``meta_test``) are accepted and
    checked by the engine; unknown ones are rejected."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "kind": "meta-train", "task": {"family": "sine"}, "loss": {"hidden": [50, 50]}, "seeds": 5,
        "outer_iterations": 500, "inner_steps": 1, "device": "cpu", "register_as": "my-loss"}]})

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


class JobProgress(BaseModel):
    completed: int
    total: int
    unit: str


class JobOut(BaseModel):
    """A job as ``job_json`` renders it: the answer to a submit (the fields in this order)."""

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


class LossVersionOut(BaseModel):
    """A loss version as ``version_json`` renders it (the fields in this order)."""

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
