"""``/healthz`` and ``/metrics`` (no API key needed: probes and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from logitstore.server.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
def healthz(request: Request) -> Health:
    """Liveness and readiness: ``{"status": "ok", "datasets": N}``."""
    return Health(status="ok", datasets=len(request.app.state.store.names()))


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}
    },
)
def metrics(request: Request) -> Response:
    """Prometheus text format: requests, latency, response bytes and errors by type."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
