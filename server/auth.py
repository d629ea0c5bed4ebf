"""Optional API key: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from logitstore.errors import AuthenticationError


async def require_api_key(request: Request) -> None:
    """A dependency of every ``/v1`` route; does nothing when no key is configured. ``async`` so that it runs on
    the event loop (it only compares strings): FastAPI runs a plain ``def`` dependency in its thread pool, one
    more thread hop per request."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        what = "no API key was given" if not given else "the API key is wrong"
        raise AuthenticationError(f"{what}: send 'Authorization: Bearer <key>' (or 'X-API-Key: <key>')")
