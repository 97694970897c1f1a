"""Fine-tuning jobs: create, list, retrieve, cancel, events, checkpoints, and the job's safety report page."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from tuneguard.serve.deps import ServiceDep, TenantDep
from tuneguard.serve.errors import bad_request, not_found
from tuneguard.serve.objects import checkpoint_object, cursor_page, event_object, job_object
from tuneguard.serve.policy import HyperparameterError, resolve_hyperparameters
from tuneguard.serve.report import render_report

router = APIRouter(prefix="/v1/fine_tuning")
SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class JobCreate(BaseModel):
    """The body of ``POST /v1/fine_tuning/jobs`` (``openai.types.fine_tuning.job_create_params``)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, Any] | None = None
    method: dict[str, Any] | None = None
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None


@router.post("/jobs")
def create_job(body: JobCreate, svc: ServiceDep, tenant: TenantDep) -> dict[str, Any]:
    policy = svc.policy
    if body.model not in policy.models:
        offered = ", ".join(policy.models)
        raise bad_request(
            f"Model {body.model!r} is not available for fine-tuning; this service offers: {offered}",
            param="model",
            code="model_not_available",
        )
    training = _fine_tune_file(svc, tenant, body.training_file, "training_file")
    if body.validation_file is not None:
        _fine_tune_file(svc, tenant, body.validation_file, "validation_file")
    if body.suffix is not None and not SUFFIX.match(body.suffix):
        raise bad_request("suffix: at most 64 letters, digits, '-' and '_'", param="suffix")
    if body.integrations:
        raise bad_request("integrations are not supported on this service", param="integrations")
    if body.metadata and (
        len(body.metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in body.metadata.items())
    ):
        raise bad_request("metadata: at most 16 keys of 64 characters, values of 512", param="metadata")
    try:
        hyperparameters = resolve_hyperparameters(policy.hyperparameters, _requested_hyperparameters(body))
    except HyperparameterError as exc:
        raise bad_request(str(exc), param=exc.param) from None
    fields = {
        "model": body.model,
        "training_file": body.training_file,
        "validation_file": body.validation_file,
        "examples": training["examples"],
        "hyperparameters": hyperparameters,
        "suffix": body.suffix,
        "seed": body.seed if body.seed is not None else secrets.randbelow(2**31),
        "metadata": body.metadata,
        "timings": {"created": time.time(), "upload_s": round(training["upload_s"], 3)},
    }
    files = {"training.jsonl": body.training_file}
    if body.validation_file is not None:
        files["validation.jsonl"] = body.validation_file
    job = svc.store.add_job(tenant, fields, files)
    with svc.store.transaction() as db:
        svc.store.add_event(db, job["id"], f"Created fine-tuning job: {job['id']}")
        svc.store.add_event(db, job["id"], f"Validating training file: {body.training_file}")
    svc.scheduler.wake()
    return job_object(job)


@router.get("/jobs")
def list_jobs(
    svc: ServiceDep, tenant: TenantDep, after: str | None = None, limit: int = Query(20, ge=1, le=100)
) -> dict[str, Any]:
    rows, more = svc.store.list_jobs(tenant, after, limit)
    return cursor_page([job_object(r) for r in rows], more)


@router.get("/jobs/{job_id}")
def retrieve_job(job_id: str, svc: ServiceDep, tenant: TenantDep) -> dict[str, Any]:
    return job_object(_own_job(svc, tenant, job_id))


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, svc: ServiceDep, tenant: TenantDep) -> dict[str, Any]:
    _own_job(svc, tenant, job_id)
    await run_in_threadpool(svc.scheduler.cancel, job_id)  # returns once the job's worker has stopped
    return job_object(svc.store.get_job(tenant, job_id))


@router.get("/jobs/{job_id}/events")
def list_events(
    job_id: str, svc: ServiceDep, tenant: TenantDep, after: str | None = None, limit: int = Query(20, ge=1, le=1000)
) -> dict[str, Any]:
    _own_job(svc, tenant, job_id)
    rows, more = svc.store.list_events(job_id, after, limit)
    return cursor_page([event_object(r) for r in rows], more)


@router.get("/jobs/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str, svc: ServiceDep, tenant: TenantDep, after: str | None = None, limit: int = Query(10, ge=1, le=100)
) -> dict[str, Any]:
    job = _own_job(svc, tenant, job_id)
    rows, more = svc.store.list_checkpoints(job_id, after, limit)
    return cursor_page([checkpoint_object(r, job) for r in rows], more)


@router.get("/jobs/{job_id}/report", response_class=HTMLResponse)
def job_report(job_id: str, svc: ServiceDep, tenant: TenantDep) -> HTMLResponse:
    job = _own_job(svc, tenant, job_id)
    return HTMLResponse(render_report(job, svc.store.job_dir(job_id)))


def _own_job(svc: ServiceDep, tenant: str, job_id: str) -> dict[str, Any]:
    job = svc.store.get_job(tenant, job_id)
    if job is None:
        raise not_found("fine-tuning job", job_id)
    return job


def _fine_tune_file(svc: ServiceDep, tenant: str, file_id: str, param: str) -> dict[str, Any]:
    row = svc.store.get_file(tenant, file_id)
    if row is None or row["purpose"] != "fine-tune":
        raise bad_request(f"invalid {param}: no fine-tune file {file_id!r}", param=param, code=f"invalid_{param}")
    return row


def _requested_hyperparameters(body: JobCreate) -> dict[str, Any] | None:
    if body.method is None:
        return body.hyperparameters
    kind = body.method.get("type")
    if kind != "supervised":
        raise bad_request(
            f"method.type {kind!r} is not supported; this service runs 'supervised' jobs", param="method.type"
        )
    unknown = sorted(set(body.method) - {"type", "supervised"})
    if unknown:
        raise bad_request(f"method.{unknown[0]} is not supported on this service", param=f"method.{unknown[0]}")
    supervised = body.method.get("supervised") or {}
    return supervised.get("hyperparameters") or body.hyperparameters
