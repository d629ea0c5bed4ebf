"""The one place where logitstore errors become HTTP responses: ``{"detail": message, "error": class name}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from logitstore.errors import (
    AuthenticationError,
    CorruptShardError,
    InvalidInputError,
    LimitExceededError,
    LogitStoreError,
    ManifestVersionError,
    NotFoundError,
)

#: most specific first
STATUS: list[tuple[type[LogitStoreError], int]] = [
    (AuthenticationError, 401),
    (NotFoundError, 404),
    (LimitExceededError, 413),
    (InvalidInputError, 422),
    (CorruptShardError, 500),
    (ManifestVersionError, 500),
]


def status_of(exc: LogitStoreError) -> int:
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 500)


def install(app: FastAPI, count_error) -> None:  # type: ignore[no-untyped-def]
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
