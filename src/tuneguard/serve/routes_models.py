"""Models (the offered base models and the tenant's own fine-tuned ones) and chat completions on them.

Chat completions are single-turn and greedy, as the models are trained and evaluated: the last user message is
the prompt (with the training template), sampling options are accepted and ignored, ``n`` must be 1 and
streaming is not offered. The answer is returned to the caller and never logged.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from tuneguard.serve.deps import ServiceDep, TenantDep
from tuneguard.serve.engine import base_model_settings
from tuneguard.serve.errors import APIError, bad_request
from tuneguard.serve.objects import model_object
from tuneguard.serve.store import new_id

router = APIRouter(prefix="/v1")
STARTED = int(time.time())


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``; other OpenAI options (temperature, top_p, ...) are accepted and
    have no effect: decoding is greedy."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    n: int | None = None
    stream: bool | None = None
    tools: list[Any] | None = None


@router.get("/models")
def list_models(svc: ServiceDep, tenant: TenantDep) -> dict[str, Any]:
    models = [model_object(name, STARTED, svc.policy.organization) for name in svc.policy.models]
    models += [
        model_object(r["fine_tuned_model"], r["finished_at"], tenant) for r in svc.store.fine_tuned_models(tenant)
    ]
    return {"object": "list", "data": models}


@router.get("/models/{model_id:path}")
def retrieve_model(model_id: str, svc: ServiceDep, tenant: TenantDep) -> dict[str, Any]:
    if model_id in svc.policy.models:
        return model_object(model_id, STARTED, svc.policy.organization)
    row = _own_model(svc, tenant, model_id)
    return model_object(model_id, row["finished_at"], tenant)


@router.delete("/models/{model_id:path}")
def delete_model(model_id: str, svc: ServiceDep, tenant: TenantDep) -> dict[str, Any]:
    if model_id in svc.policy.models:
        raise APIError(
            403,
            f"{model_id!r} is a base model of this service; only your fine-tuned models can be deleted",
            code="model_not_deletable",
            type="permission_error",
        )
    row = _own_model(svc, tenant, model_id)
    svc.chat.forget({"model_name_or_path": row["model_dir"]})
    svc.store.delete_model(tenant, model_id)
    return {"id": model_id, "object": "model", "deleted": True}


@router.post("/chat/completions")
async def chat_completion(body: ChatRequest, svc: ServiceDep, tenant: TenantDep) -> dict[str, Any]:
    if body.stream:
        raise bad_request("streaming is not supported on this service; leave stream unset", param="stream")
    if body.n not in (None, 1):
        raise bad_request("n must be 1 (decoding is greedy)", param="n")
    if body.tools:
        raise bad_request("tools are not supported on this service", param="tools")
    prompt = _prompt(body.messages)
    limit = svc.policy.inference.max_new_tokens
    max_new_tokens = min(body.max_completion_tokens or body.max_tokens or limit, limit)
    model = _chat_model(svc, tenant, body.model)
    answer = await run_in_threadpool(svc.chat.complete, model, prompt, max_new_tokens)
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "finish_reason": answer.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        },
    }


def _chat_model(svc: ServiceDep, tenant: str, name: str) -> dict[str, Any]:
    if name in svc.policy.models:
        settings = base_model_settings(svc.policy, name)
        if settings is None:
            raise APIError(
                503, f"The model {name!r} is being prepared; retry shortly", type="server_error", code="model_not_ready"
            )
        return settings
    return {"model_name_or_path": _own_model(svc, tenant, name)["model_dir"]}


def _own_model(svc: ServiceDep, tenant: str, name: str) -> dict[str, Any]:
    row = svc.store.fine_tuned_model(tenant, name)
    if row is None:
        raise APIError(
            404, f"The model {name!r} does not exist or you do not have access to it", code="model_not_found"
        )
    return row


def _prompt(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise bad_request("messages: no user message", param="messages")
    content = users[-1].get("content")
    if isinstance(content, list):  # content parts: only text parts are supported
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise bad_request("messages: only text content parts are supported", param="messages")
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str) or not content.strip():
        raise bad_request("messages: the last user message has no text", param="messages")
    return content
