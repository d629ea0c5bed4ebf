"""``create_app(settings)``: the read-only REST service over one store (ARCHITECTURE §6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

import logitstore
from logitstore.errors import InvalidInputError
from logitstore.server import errors
from logitstore.server.auth import require_api_key
from logitstore.server.metrics import Metrics, MetricsMiddleware
from logitstore.server.routes import datasets, files, lookup, ops
from logitstore.server.settings import Settings
from logitstore.server.store import Store


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app. Without ``settings`` they come from ``LOGITSTORE_*`` environment variables, so
    ``uvicorn --factory logitstore.server:create_app`` works."""
    if settings is None:
        try:
            settings = Settings()  # type: ignore[call-arg]
        except ValidationError as exc:
            raise InvalidInputError(
                f"service settings are incomplete: {exc.errors()[0]['loc'][0]} {exc.errors()[0]['msg']}; set "
                "LOGITSTORE_STORE=/path/to/store (or pass --store to `logitstore serve`)"
            ) from None
    store = Store(settings.store, verify=settings.verify, cache_bytes=settings.cache_mb << 20)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(
        title="logitstore",
        version=logitstore.__version__,
        description="Cached teacher logits for knowledge distillation: records by sequence, batch or content, "
        "and raw shard bytes for remote loaders.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.store, app.state.metrics = settings, store, metrics
    errors.install(app, metrics.count_error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        metrics.count_error(type(exc).__name__)
        return JSONResponse({"detail": f"{type(exc).__name__}: {exc}", "error": type(exc).__name__}, status_code=500)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(ops.router)
    for router in (datasets.router, files.router, lookup.router):
        app.include_router(router, dependencies=[Depends(require_api_key)])
    _document_limits(app, settings)
    return app


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Put this service's configured list limits into its OpenAPI document as ``maxItems``, so a request the
    document allows is one the service accepts (the positions limit depends on the sequence: a 413 says so)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate()["components"]["schemas"]
            schemas["BatchRequest"]["properties"]["seq_ids"]["maxItems"] = settings.max_batch_sequences
            schemas["LookupRequest"]["properties"]["input_ids"]["maxItems"] = settings.max_lookup_tokens
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
