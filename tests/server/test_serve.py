"""A real `logitstore serve` process on a free 127.0.0.1 port: the client, remote datasets and the torch loader
read through it exactly what is on disk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

from logitstore import open_dataset
from logitstore.client import Client
from logitstore.errors import (
    AuthenticationError,
    LimitExceededError,
    SequenceNotFoundError,
    ServiceUnavailableError,
)
from logitstore.torch import LogitDataset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(store, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start a server; its log goes to a temporary file (a pipe nobody reads would fill and block the server)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGITSTORE_")}
    log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the server process
    proc = subprocess.Popen(
        [sys.executable, "-m", "logitstore.cli", "serve", "--store", str(store), "--port", str(port), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(log.read().decode()) from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.fixture(scope="module")
def server(store):
    proc, url = start(store, "--max-batch", "16")
    yield url
    proc.send_signal(signal.SIGINT)  # Ctrl-C stops it cleanly
    assert proc.wait(timeout=30) == 0


def test_client_round_trip_equals_the_disk(server, store):
    with Client(server) as c:
        assert c.health()["datasets"] == 2
        assert {d["name"] for d in c.datasets()} == {"sample", "topk"}
        for name in ("sample", "topk"):
            ds = open_dataset(store / name)
            assert c.manifest(name) == ds.manifest
            assert all(c.sequence(name, i).equals(ds[i]) for i in (0, 11, 22))
            assert c.sequence(name, 3, start=1, stop=4).equals(ds[3].slice(1, 4))
            assert all(a.equals(ds[a.seq_id]) for a in c.batch(name, [9, 2, 2, 17]))
            assert c.by_key(name, ds[5].key).equals(ds[5])
        matches, record = c.lookup(open_dataset(store / "topk")[8].input_ids)
        assert ("topk", 8) in matches and record.equals(open_dataset(store / "topk")[8])
        assert c.file("sample", "manifest.json") == (store / "sample" / "manifest.json").read_bytes()
        assert c.file("sample", "keys.idx", start=0, stop=8) == b"LSKEYS01"


def test_client_raises_the_services_typed_errors(server):
    with Client(server) as c:
        with pytest.raises(SequenceNotFoundError, match=r"seq_id 99 is outside 0..22 .*HTTP 404"):
            c.sequence("sample", 99)
        with pytest.raises(LimitExceededError, match="17 seq_ids in one batch, the limit is 16"):
            c.batch("sample", list(range(17)))
    with pytest.raises(ServiceUnavailableError, match="is `logitstore serve` running there"):
        Client(f"http://127.0.0.1:{free_port()}").health()


@pytest.mark.parametrize("name", ["sample", "topk"])
def test_open_dataset_reads_through_the_service(server, store, name):
    local = open_dataset(store / name)
    remote = open_dataset(f"{server}/v1/datasets/{name}")
    assert remote.manifest == local.manifest and len(remote) == len(local)
    assert all(r.equals(local[r.seq_id]) for r in remote)
    assert remote.get_by_key(local[4].key).equals(local[4])


def test_the_torch_dataset_streams_from_the_service_like_from_disk(server, store):
    local = list(LogitDataset(store / "sample", batch_size=5, block_size=4))
    remote = list(LogitDataset(f"{server}/v1/datasets/sample", batch_size=5, block_size=4))
    assert len(local) == len(remote)
    for a, b in zip(local, remote, strict=True):
        for key, value in a.items():
            assert torch.equal(value, b[key]) if torch.is_tensor(value) else value == b[key]
    ds = LogitDataset(f"{server}/v1/datasets/topk", block_size=4)
    ids = [r.seq_id for b in torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list) for r in b]
    assert sorted(ids) == list(range(23)) and np.unique(ids).size == 23


def test_api_key_protects_the_service(store, monkeypatch):
    proc, url = start(store, "--api-key", "k3y")
    try:
        monkeypatch.delenv("LOGITSTORE_API_KEY", raising=False)
        with pytest.raises(AuthenticationError, match="no API key was given"):
            Client(url).datasets()
        with pytest.raises(AuthenticationError, match="the API key is wrong"):
            Client(url, api_key="nope").datasets()
        with Client(url, api_key="k3y") as c:
            assert len(c.datasets()) == 2
            remote = c.open_dataset("sample")
            assert remote[3].equals(open_dataset(store / "sample")[3])
        monkeypatch.setenv("LOGITSTORE_API_KEY", "k3y")  # what open_dataset reads; the client now does too
        with Client(url) as c:
            assert len(c.datasets()) == 2
        assert open_dataset(f"{url}/v1/datasets/topk")[0].equals(open_dataset(store / "topk")[0])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
