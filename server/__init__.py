"""logitstore.server: the FastAPI caching service (see ARCHITECTURE §6)."""

from __future__ import annotations

from logitstore.server.app import create_app
from logitstore.server.settings import Settings

__all__ = ["Settings", "create_app"]
