"""What every route needs: the running service's parts and the tenant of the request's API key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from tuneguard.serve.auth import KeyRing, bearer_key
from tuneguard.serve.errors import APIError
from tuneguard.serve.inference import ChatModels
from tuneguard.serve.policy import ServePolicy
from tuneguard.serve.scheduler import Scheduler
from tuneguard.serve.store import ServiceStore


@dataclass
class Service:
    policy: ServePolicy
    keys: KeyRing
    store: ServiceStore
    scheduler: Scheduler
    chat: ChatModels


# Both are async: they do no I/O, and a sync dependency would cost every request a hop through the thread pool.
async def service(request: Request) -> Service:
    return request.app.state.service


async def tenant(request: Request) -> str:
    """The tenant whose API key the request carries; 401 otherwise (the key itself is never logged or echoed)."""
    key = bearer_key(request.headers.get("authorization"))
    if key is None:
        raise APIError(401, "You didn't provide an API key (Authorization: Bearer KEY)", code="missing_api_key")
    name = request.app.state.service.keys.tenant(key)
    if name is None:
        raise APIError(401, "Incorrect API key provided", code="invalid_api_key")
    return name


ServiceDep = Annotated[Service, Depends(service)]
TenantDep = Annotated[str, Depends(tenant)]
