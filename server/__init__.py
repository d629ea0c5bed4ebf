"""logitstore.server: the FastAPI caching service (see ARCHITECTURE §6)."""
