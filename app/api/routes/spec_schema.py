"""The JSON Schema of a meta-train job spec, for clients that build or check specs before submitting."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import READ
from app.api.schemas import JobSpec, JsonSchemaOut

router = APIRouter(prefix="/v1/schemas", tags=["jobs"], dependencies=[READ])


@router.get("/job-spec", summary="The meta-train job spec (POST /v1/jobs) as a JSON Schema, every key described",
            response_model=JsonSchemaOut)
def job_spec() -> dict:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **JobSpec.model_json_schema()}
