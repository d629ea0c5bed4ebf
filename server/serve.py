"""``logitstore serve``: uvicorn over ``create_app``, settings passed through ``LOGITSTORE_*`` so that every
uvicorn worker process builds the same app."""

from __future__ import annotations

import os
from pathlib import Path

from logitstore.errors import InvalidInputError
from logitstore.server.settings import Settings
from logitstore.server.store import Store

#: seconds in-flight requests get to finish after Ctrl-C / SIGTERM before connections are closed
GRACEFUL_SHUTDOWN_S = 10


def serve(
    store: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    api_key: str | None = None,
    max_batch_sequences: int | None = None,
    verify: bool = False,
    log_level: str = "info",
) -> None:
    """Serve ``store`` until interrupted (Ctrl-C stops it cleanly)."""
    import uvicorn

    if workers < 1:
        raise InvalidInputError(f"--workers must be >= 1, got {workers}")
    if not 0 <= port < 65536:
        raise InvalidInputError(f"--port must be in 0..65535, got {port}")
    root = Path(store).resolve()
    names = Store(root).names()  # fails now, with a clear message, if the store is not a directory
    env = {"LOGITSTORE_STORE": str(root), "LOGITSTORE_VERIFY": "true" if verify else "false"}
    if api_key:
        env["LOGITSTORE_API_KEY"] = api_key
    if max_batch_sequences:
        env["LOGITSTORE_MAX_BATCH_SEQUENCES"] = str(max_batch_sequences)
    os.environ.update(env)
    Settings()  # type: ignore[call-arg]  # validate before forking workers
    auth = "API key required" if os.environ.get("LOGITSTORE_API_KEY") else "no API key"
    print(f"logitstore: serving {len(names)} dataset(s) from {root} on http://{host}:{port} ({auth})", flush=True)
    uvicorn.run(
        "logitstore.server.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,  # Ctrl-C never waits forever on a slow streaming client
    )
