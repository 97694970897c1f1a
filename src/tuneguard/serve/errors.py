"""Errors in the OpenAI shape, ``{"error": {"message", "type", "param", "code"}}``, so that the official client
raises its own exception types (400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError,
404 NotFoundError, 409 ConflictError, 5xx InternalServerError)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

logger = logging.getLogger("tuneguard.serve")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def not_found(kind: str, object_id: str, param: str | None = None) -> APIError:
    """The same answer for an id that does not exist and one that belongs to another tenant."""
    return APIError(
        404, f"No such {kind}: {object_id!r}", param=param, code=kind.replace("-", "_").replace(" ", "_") + "_not_found"
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_response(status: int, message: str, *, param=None, code=None, type="invalid_request_error") -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, type=exc.type)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"] if p not in ("body", "query", "path", "form")]
        param = ".".join(loc) or None
        if first["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}"
        elif first["type"] == "missing":
            message = f"Missing required parameter: {param}"
        else:
            message = f"Invalid value for {param}: {first['msg']}"
        return error_response(400, message, param=param, code="invalid_request")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
        message = "Unknown request URL" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, message, code=code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "The server had an error processing your request", type="server_error")
