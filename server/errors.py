"""The one place where errors become HTTP responses: ``{"detail": message, "error": class name}``.

logitstore errors map through :data:`STATUS`; FastAPI's own errors (an unknown route, a wrong method, a body that
is not JSON, a request that does not match the OpenAPI schema) get the same body, so every error a client sees has
one shape and names a :mod:`logitstore.errors` class the Python client can raise again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from logitstore.errors import (
    AuthenticationError,
    CorruptShardError,
    InvalidInputError,
    LimitExceededError,
    LogitStoreError,
    ManifestVersionError,
    NotFoundError,
)
from logitstore.server.schemas import ErrorOut

#: most specific first
STATUS: list[tuple[type[LogitStoreError], int]] = [
    (AuthenticationError, 401),
    (NotFoundError, 404),
    (LimitExceededError, 413),
    (InvalidInputError, 422),
    (CorruptShardError, 500),
    (ManifestVersionError, 500),
]

#: what each error status means, for the OpenAPI document (routes narrow the wording)
MEANING = {
    401: "missing or wrong API key (only when the service has one)",
    404: "no such dataset, sequence or key",
    413: "more than a configured limit",
    422: "malformed request: a parameter or body that does not match this document",
    500: "a file of the dataset is corrupt or unreadable (the message names it)",
}


def error_responses(*codes: int, meaning: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer with; ``meaning`` rewords some."""
    words = {**MEANING, **(meaning or {})}
    return {code: {"model": ErrorOut, "description": words[code]} for code in sorted(codes)}


def status_of(exc: LogitStoreError) -> int:
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 500)


def _error_name(status: int) -> str:
    if status == 401:
        return AuthenticationError.__name__
    if status == 404:
        return NotFoundError.__name__
    return InvalidInputError.__name__ if status < 500 else LogitStoreError.__name__


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first route's): asked of the
    router itself, method by method, so included routers answer too."""
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in request.app.router.routes
        )
    ]


def install(app: FastAPI, count_error: Callable[[str], None]) -> None:
    """Register the handlers; ``count_error(name)`` feeds the errors-by-type metric."""

    @app.exception_handler(LogitStoreError)
    async def _logitstore_error(request: Request, exc: LogitStoreError) -> JSONResponse:
        name = type(exc).__name__
        count_error(name)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationError) else None
        return JSONResponse({"detail": str(exc), "error": name}, status_code=status_of(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        count_error("RequestValidationError")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" + (f" (got {e['input']!r})" if "input" in e else "")
            for e in exc.errors()
        )
        return JSONResponse({"detail": problems, "error": "InvalidInputError"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status, detail, headers = exc.status_code, str(exc.detail), dict(exc.headers or {})
        if status == 400:  # FastAPI: a body it could not decode; invalid JSON is already a 422, so is this
            status, detail = 422, f"body: not a UTF-8 JSON document ({detail})"
        elif status == 404 and detail == "Not Found":  # the router's: no route has this path
            detail = f"no endpoint {request.method} {request.url.path}; the API is described at /openapi.json"
        elif status == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
            detail = f"{request.method} is not allowed on {request.url.path}; use {headers['Allow']}"
        name = _error_name(status)
        count_error(name)
        return JSONResponse({"detail": detail, "error": name}, status_code=status, headers=headers or None)
