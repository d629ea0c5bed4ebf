"""A real ``logitstore serve`` process on a free loopback port, for the benchmarks that go through the service."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(
    store: Path,
    log: Path,
    *,
    workers: int = 1,
    cpus: set[int] | None = None,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, int]]:
    """Start ``logitstore serve --store STORE`` and yield its base URL and process id; stop it with Ctrl-C on exit.

    Its output goes to ``log`` (a pipe nobody reads would fill up and block the server); ``cpus`` pins it (and the
    threads and workers it starts) to those CPUs; ``env`` adds ``LOGITSTORE_*`` settings (the caller's are dropped)."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOGITSTORE_")}, **(env or {})}
    command = [sys.executable, "-m", "logitstore.cli", "serve", "--store", str(store), "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "warning", *extra]
    with open(log, "wb") as out:
        pin = None if cpus is None else lambda: os.sched_setaffinity(0, cpus)
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)
    try:
        _wait_until_listening(proc, port, log)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_listening(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:  # ready when /healthz answers (with --workers N the socket listens before the workers do)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not listen on port {port} within {timeout:.0f} s:\n{log.read_text()}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its children (the uvicorn workers) so far."""
    import psutil

    total = 0.0
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total
