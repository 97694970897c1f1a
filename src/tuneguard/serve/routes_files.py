"""Files: upload (multipart, ``purpose=fine-tune``, JSONL checked line by line), list, retrieve, content, delete."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from tuneguard.serve.deps import ServiceDep, TenantDep
from tuneguard.serve.errors import bad_request, not_found
from tuneguard.serve.objects import cursor_page, file_object
from tuneguard.serve.uploads import UploadError, check_training_file

router = APIRouter(prefix="/v1")
MULTIPART_OVERHEAD = 1 << 20  # headers and the other fields of an upload, in bytes


@router.post("/files")
async def upload_file(request: Request, svc: ServiceDep, tenant: TenantDep) -> dict[str, Any]:
    # The form is read here, after authentication, not by FastAPI before it.
    start = time.monotonic()
    limit = svc.policy.limits.max_file_bytes
    if int(request.headers.get("content-length") or 0) > limit + MULTIPART_OVERHEAD:
        raise _too_large(limit)
    form = await request.form(max_files=1, max_fields=4)
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise bad_request("Missing required parameter: file (multipart/form-data)", param="file")
    if purpose != "fine-tune":
        raise bad_request(f"purpose must be 'fine-tune' on this service, got {purpose!r}", param="purpose")
    content = await upload.read(limit + 1)
    if len(content) > limit:
        raise _too_large(limit)
    policy = svc.policy.limits
    try:
        summary = await run_in_threadpool(
            check_training_file, content, max_examples=policy.max_examples, min_examples=policy.min_examples
        )
    except UploadError as exc:
        raise bad_request(f"Invalid training file: {exc}", param="file", code="invalid_file_format") from None
    filename = _display_name(upload.filename)
    row = await run_in_threadpool(
        svc.store.add_file, tenant, filename, purpose, content, summary.examples, time.monotonic() - start
    )
    return file_object(row)


@router.get("/files")
def list_files(
    svc: ServiceDep,
    tenant: TenantDep,
    after: str | None = None,
    limit: int = Query(10000, ge=1, le=10000),
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> dict[str, Any]:
    rows, more = svc.store.list_files(tenant, after, limit, order == "asc", purpose)
    return cursor_page([file_object(r) for r in rows], more)


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, svc: ServiceDep, tenant: TenantDep) -> dict[str, Any]:
    return file_object(_own_file(svc, tenant, file_id))


@router.get("/files/{file_id}/content")
def file_content(file_id: str, svc: ServiceDep, tenant: TenantDep) -> FileResponse:
    _own_file(svc, tenant, file_id)
    return FileResponse(svc.store.file_path(file_id), media_type="application/octet-stream")


@router.delete("/files/{file_id}")
def delete_file(file_id: str, svc: ServiceDep, tenant: TenantDep) -> dict[str, Any]:
    if not svc.store.delete_file(tenant, file_id):
        raise not_found("file", file_id)
    return {"id": file_id, "object": "file", "deleted": True}


def _own_file(svc: ServiceDep, tenant: str, file_id: str) -> dict[str, Any]:
    row = svc.store.get_file(tenant, file_id)
    if row is None:
        raise not_found("file", file_id)
    return row


def _too_large(limit: int):
    return bad_request(
        f"The file is larger than this service's limit of {limit} bytes", param="file", code="file_too_large"
    )


def _display_name(name: str | None) -> str:
    """The upload's name as the user gave it, for display only (it never becomes a path)."""
    printable = "".join(ch for ch in (name or "upload.jsonl") if ch.isprintable())
    return printable[:255] or "upload.jsonl"
