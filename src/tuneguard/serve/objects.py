"""The API's objects, shaped as the official ``openai`` client's types (``openai.types``) define them."""

from __future__ import annotations

from typing import Any


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def job_object(row: dict[str, Any]) -> dict[str, Any]:
    hp = row["hyperparameters"]
    return {
        "id": row["id"],
        "object": "fine_tuning.job",
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "model": row["model"],
        "fine_tuned_model": row["fine_tuned_model"],
        "organization_id": row["tenant"],
        "status": row["status"],
        "error": row["error"],
        "hyperparameters": hp,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        "training_file": row["training_file"],
        "validation_file": row["validation_file"],
        "result_files": [],
        "trained_tokens": row["trained_tokens"],
        "seed": row["seed"],
        "suffix": row["suffix"],
        "metadata": row["metadata"],
        "estimated_finish": None,
        "integrations": [],
    }


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.event",
        "created_at": row["created_at"],
        "level": row["level"],
        "message": row["message"],
        "data": row["data"] or {},
        "type": row["type"],
    }


def checkpoint_object(row: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    base = job["fine_tuned_model"] or ":".join(
        ["ft", job["model"], job["tenant"], job["suffix"] or "", job["model_tag"]]
    )
    return {
        "id": row["id"],
        "object": "fine_tuning.job.checkpoint",
        "created_at": row["created_at"],
        "fine_tuning_job_id": job["id"],
        "fine_tuned_model_checkpoint": f"{base}:ckpt-step-{row['step']}",
        "step_number": row["step"],
        "metrics": row["metrics"],
    }


def model_object(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def cursor_page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A page as ``openai.pagination.SyncCursorPage`` reads it (the next page starts after the last id)."""
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
    }
