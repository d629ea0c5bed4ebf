"""The caching service as a background process of the demo (``logitstore serve`` on a free loopback port)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from logitstore.client import Client
from logitstore.errors import ServiceUnavailableError

START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def background_service(store: Path, log: Path) -> Iterator[str]:
    """Serve ``store`` on 127.0.0.1 until the block exits (also on Ctrl-C or an error); yields the base URL. The
    server's log goes to ``log``."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "logitstore.cli", "serve", "--store", str(store), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with Client(url, timeout=2) as client:
                    client.health()
                break
            except ServiceUnavailableError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the service did not start; its log:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
