"""The routes that answer on the event loop: ``/files`` (read from the page cache, no thread pool hop) answers
exactly as Starlette's ``FileResponse`` did; batches and keys of cached records are sent from the kept streams;
the optional record fields (label_logprob, logit_mean, logit_std) travel through the service."""

from __future__ import annotations

import re
import signal

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route

import logitstore.server.responses as responses
from logitstore import DatasetWriter, Spec, open_dataset
from logitstore.client import Client
from logitstore.server import Settings, create_app
from logitstore.wire import ARROW_STREAM, record_from_json, records_from_arrow
from tests.conftest import synthetic_record, teacher
from tests.server.test_fast_path import hops  # noqa: F401 -- the fixture counting thread pool hops
from tests.server.test_serve import start

ARROW = {"Accept": ARROW_STREAM}
OPTIONAL = Spec(method="topk", k=4, label_logprob=True, logit_stats=True)


def _write(path, spec, n, length=9):
    rng = np.random.default_rng(length)
    records = [synthetic_record(spec, rng, seq_id=i, length=length, vocab_size=100, neg_inf=True) for i in range(n)]
    with DatasetWriter(path, spec=spec, teacher=teacher(100)) as w:
        for r in records:
            w.write(r)


@pytest.fixture
def files(tmp_path):
    """A dataset with a 100-byte file and an empty one under shards/, the new app and a Starlette FileResponse
    over the same file (the reference)."""
    _write(tmp_path / "ds", OPTIONAL, 2)
    (tmp_path / "ds" / "shards" / "blob.bin").write_bytes(bytes(range(100)))
    (tmp_path / "ds" / "shards" / "empty.bin").write_bytes(b"")

    def reference(request):
        return FileResponse(tmp_path / "ds" / "shards" / request.path_params["file"])

    with (
        TestClient(create_app(Settings(store=tmp_path))) as app,
        TestClient(Starlette(routes=[Route("/{file}", reference, methods=["GET", "HEAD"])])) as ref,
    ):
        yield app, ref


def _etag(ref: TestClient) -> str:
    return ref.head("/blob.bin").headers["etag"]


CASES = [
    {},
    {"Range": "bytes=0-3"},
    {"Range": "bytes=5-"},
    {"Range": "bytes=-7"},
    {"Range": "bytes=90-500"},
    {"Range": "bytes=0-3,2-9,20-25"},
    {"Range": "bytes=0-3, 50-"},
    {"Range": "bytes=100-"},  # past the end: 416
    {"Range": "bytes=9-3"},  # ends before it starts: 400
    {"Range": "bytes=-"},  # no range: 400
    {"Range": "bytes=0-3", "If-Range": "etag"},  # the current ETag: the range
    {"Range": "bytes=0-3", "If-Range": '"stale"'},  # another: the whole file
]
SAME = ("content-type", "content-length", "content-range", "etag", "last-modified", "accept-ranges")


def _boundary(response: httpx.Response) -> str | None:
    found = re.search(r"boundary=(\w+)", response.headers.get("content-type", ""))
    return None if found is None else found.group(1)


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code
    ba, bb = _boundary(a), _boundary(b)
    for name in SAME:
        va, vb = a.headers.get(name), b.headers.get(name)
        assert (va.replace(ba, "B") if va and ba else va) == (vb.replace(bb, "B") if vb and bb else vb), name
    body_a = a.content.replace(ba.encode(), b"B") if ba else a.content
    body_b = b.content.replace(bb.encode(), b"B") if bb else b.content
    assert body_a == body_b


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("headers", CASES, ids=lambda h: " ".join(h.values()) or "whole")
@pytest.mark.parametrize("read", ["page cache", "thread"])
def test_the_file_route_answers_as_starlettes_file_response(files, method, headers, read, monkeypatch):
    app, ref = files
    if read == "thread":  # preadv(RWF_NOWAIT) unavailable: every read in a worker thread
        monkeypatch.setattr(responses, "_NOWAIT", False)
    monkeypatch.setattr(responses.FileRangeResponse, "chunk_size", 7)  # many reads per range
    headers = {k: _etag(ref) if v == "etag" else v for k, v in headers.items()}
    for name in ("blob.bin", "empty.bin"):
        ours = app.request(method, f"/v1/datasets/ds/files/shards/{name}", headers=headers)
        _same(ours, ref.request(method, f"/{name}", headers=headers))
        if ours.status_code == 200:
            assert ours.headers["content-type"] == "application/octet-stream"


def test_a_large_body_is_watched_for_a_disconnect_and_sent_whole(files, monkeypatch):
    app, ref = files
    monkeypatch.setattr(responses.FileRangeResponse, "watch_above", 10)
    monkeypatch.setattr(responses.FileRangeResponse, "chunk_size", 16)
    for headers in ({}, {"Range": "bytes=3-80"}, {"Range": "bytes=0-3,20-60"}):
        _same(app.get("/v1/datasets/ds/files/shards/blob.bin", headers=headers), ref.get("/blob.bin", headers=headers))


def test_a_cached_file_is_read_on_the_event_loop(files, tmp_path, monkeypatch):
    app, _ = files
    threads = []
    real = responses._read_in_thread

    async def counting(*args):
        threads.append(args)
        return await real(*args)

    monkeypatch.setattr(responses, "_read_in_thread", counting)
    whole = app.get("/v1/datasets/ds/files/shards/blob.bin")
    assert whole.content == bytes(range(100))
    if responses._NOWAIT:  # the kernel and filesystem read the page cache without waiting: no thread
        assert threads == []
    manifest = app.get("/v1/datasets/ds/files/manifest.json")
    assert (
        manifest.headers["content-type"] == "application/json"
        and manifest.content == (tmp_path / "ds" / "manifest.json").read_bytes()
    )


def test_batches_and_keys_of_cached_records_do_not_leave_the_event_loop(tmp_path, hops):  # noqa: F811
    for spec, name in ((OPTIONAL, "a"), (Spec(method="sample", n=8, proposal_temperature=2.0), "b")):
        _write(tmp_path / name, spec, 12)
    with (
        TestClient(create_app(Settings(store=tmp_path, cache_mb=8))) as cached,
        TestClient(create_app(Settings(store=tmp_path, cache_mb=0))) as uncached,
    ):
        for name in ("a", "b"):
            disk = open_dataset(tmp_path / name)
            seq_ids = [9, 2, 2, 11, 0]
            url = f"/v1/datasets/{name}/batch"
            never_cached = uncached.post(url, json={"seq_ids": seq_ids}, headers=ARROW)
            key = f"/v1/datasets/{name}/keys/{disk[7].key.hex()}"
            key_never_cached = uncached.get(key, headers=ARROW).content
            n = len(hops)
            miss = cached.post(url, json={"seq_ids": seq_ids}, headers=ARROW)
            assert len(hops) == n + 1  # the misses decoded their row groups in the thread pool
            hit = cached.post(url, json={"seq_ids": seq_ids}, headers=ARROW)
            assert len(hops) == n + 1  # every record cached: sent from the kept streams on the event loop
            assert hit.status_code == 200 and int(hit.headers["content-length"]) == len(hit.content)
            for response in (hit, miss, never_cached):
                got = records_from_arrow(response.content)
                assert [r.seq_id for r in got] == seq_ids and all(r.equals(disk[r.seq_id]) for r in got)
            as_json = cached.post(url, json={"seq_ids": seq_ids})
            assert len(hops) == n + 2  # JSON: encoded in the thread pool
            records = as_json.json()["records"]
            assert all(record_from_json(r).equals(disk[i]) for r, i in zip(records, seq_ids, strict=True))

            first = cached.get(key, headers=ARROW)  # reads the key index in the thread pool
            assert len(hops) == n + 3
            again = cached.get(key, headers=ARROW)  # index in memory, record cached: on the event loop
            assert len(hops) == n + 3
            assert first.content == again.content == key_never_cached
            assert records_from_arrow(again.content)[0].equals(disk[7])
            missing = cached.get(f"/v1/datasets/{name}/keys/{'0' * 32}", headers=ARROW)
            assert missing.status_code == 404 and missing.json()["error"] == "SequenceNotFoundError"
        assert cached.post("/v1/datasets/a/batch", json={"seq_ids": [1, 12]}, headers=ARROW).status_code == 404


def test_the_optional_record_fields_travel_through_the_service(tmp_path):
    _write(tmp_path / "opt", OPTIONAL, 10, length=7)
    disk = open_dataset(tmp_path / "opt")
    assert all(disk[i].label_logprob is not None and disk[i].logit_std is not None for i in range(10))
    proc, url = start(tmp_path)
    try:
        with httpx.Client(base_url=url) as http:
            as_json = http.get("/v1/datasets/opt/sequences/4").raise_for_status().json()
            label = as_json["label_logprob"]
            assert len(label) == 7 and label[-1] is None and all(v is not None for v in label[:-1])  # NaN -> null
            assert len(as_json["logit_mean"]) == len(as_json["logit_std"]) == 7
            record = record_from_json(as_json)
            assert np.isnan(record.label_logprob[-1]) and record.equals(disk[4])
            batch = http.post("/v1/datasets/opt/batch", json={"seq_ids": [3, 1]}).raise_for_status().json()
            assert [record_from_json(r).equals(disk[i]) for r, i in zip(batch["records"], (3, 1), strict=True)] == [
                True,
                True,
            ]
            arrow = http.get("/v1/datasets/opt/sequences/4", headers=ARROW).raise_for_status().content
            (from_arrow,) = records_from_arrow(arrow)
            assert np.isnan(from_arrow.label_logprob[-1]) and from_arrow.equals(disk[4])
            assert from_arrow.logit_mean is not None and np.array_equal(from_arrow.logit_mean, disk[4].logit_mean)
        with Client(url) as client:
            assert all(client.sequence("opt", i).equals(disk[i]) for i in range(10))
            assert all(r.equals(disk[r.seq_id]) for r in client.batch("opt", [9, 0, 5]))  # misses and hits
            assert all(r.equals(disk[r.seq_id]) for r in client.batch("opt", [9, 0, 5]))
            assert client.by_key("opt", disk[6].key).equals(disk[6])
            remote = client.open_dataset("opt")  # through /files with HTTP Range
            assert all(remote[i].equals(disk[i]) for i in range(10))
        remote_url = open_dataset(f"{url}/v1/datasets/opt")
        assert all(remote_url[i].equals(disk[i]) for i in range(10))
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
