"""The sequence route's event-loop path for cached records (the cached Arrow stream sent as it is, no thread pool
hop) answers exactly like a read from disk; JSON of records encoded by orjson says what ``json.dumps`` said."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from logitstore import DatasetWriter, Spec, open_dataset
from logitstore.server import Settings, create_app
from logitstore.server.cache import RecordCache, encoded
from logitstore.server.responses import RecordsJSONResponse
from logitstore.wire import ARROW_STREAM, record_from_json, record_to_json, records_from_arrow, records_to_arrow
from tests.conftest import synthetic_record, teacher

ARROW = {"Accept": ARROW_STREAM}
QUERIES = ("?start=2&stop=6", "?start=4", "?stop=1")
SPECS = [
    Spec(method="topk", k=4, label_logprob=True, logit_stats=True),
    Spec(method="sample", n=8, proposal_temperature=2.0),
]


def _write(path, spec, n, length=9, overwrite=False):
    rng = np.random.default_rng(length)
    records = [synthetic_record(spec, rng, seq_id=i, length=length, vocab_size=100, neg_inf=True) for i in range(n)]
    with DatasetWriter(path, spec=spec, teacher=teacher(100), overwrite=overwrite) as w:
        for r in records:
            w.write(r)


@pytest.fixture
def hops(monkeypatch):
    """Counts the sequence route's hops to the thread pool."""
    import logitstore.server.routes.datasets as routes

    calls = []
    real = routes.run_in_threadpool

    async def counting(*args, **kwargs):
        calls.append(args[0])
        return await real(*args, **kwargs)

    monkeypatch.setattr(routes, "run_in_threadpool", counting)
    return calls


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_a_cached_record_is_sent_as_the_same_bytes_without_a_thread_hop(tmp_path, spec, hops):
    _write(tmp_path / "ds", spec, 5)
    disk = open_dataset(tmp_path / "ds")
    with (
        TestClient(create_app(Settings(store=tmp_path, cache_mb=1))) as cached,
        TestClient(create_app(Settings(store=tmp_path, cache_mb=0))) as uncached,
    ):
        miss = cached.get("/v1/datasets/ds/sequences/3", headers=ARROW)
        assert len(hops) == 1  # the miss decoded the row group in the thread pool
        hit = cached.get("/v1/datasets/ds/sequences/3", headers=ARROW)
        ranges = [cached.get(f"/v1/datasets/ds/sequences/3{q}", headers=ARROW).content for q in QUERIES]
        assert len(hops) == 1  # the hit and the ranges of it did not leave the event loop
        as_json = cached.get("/v1/datasets/ds/sequences/3").content
        assert len(hops) == 2  # JSON is encoded in the thread pool, hit or miss
        assert hit.status_code == miss.status_code == 200 and hit.headers["content-type"] == ARROW_STREAM
        assert int(hit.headers["content-length"]) == len(hit.content)
        never_cached = uncached.get("/v1/datasets/ds/sequences/3", headers=ARROW).content
        assert hit.content == miss.content == never_cached == records_to_arrow([disk[3]])
        assert records_from_arrow(hit.content)[0].equals(disk[3])
        assert ranges == [uncached.get(f"/v1/datasets/ds/sequences/3{q}", headers=ARROW).content for q in QUERIES]
        assert as_json == uncached.get("/v1/datasets/ds/sequences/3").content


def test_the_event_loop_path_keeps_the_limits_and_errors(tmp_path, hops):
    _write(tmp_path / "ds", SPECS[0], 3)
    with TestClient(create_app(Settings(store=tmp_path, cache_mb=1, max_positions=5))) as client:
        assert client.get("/v1/datasets/ds/sequences/1?stop=5", headers=ARROW).status_code == 200  # fills the cache
        n = len(hops)
        too_long = client.get("/v1/datasets/ds/sequences/1", headers=ARROW)
        assert too_long.status_code == 413 and too_long.json()["error"] == "LimitExceededError" and len(hops) == n
        bad = client.get("/v1/datasets/ds/sequences/1?start=7&stop=3", headers=ARROW)
        assert bad.status_code == 422 and bad.json()["error"] == "InvalidInputError"
        assert client.get("/v1/datasets/ds/sequences/3", headers=ARROW).status_code == 404  # a miss: said by the pool
        assert client.get("/v1/datasets/nope/sequences/0", headers=ARROW).status_code == 404


def test_a_rebuilt_dataset_is_not_answered_from_the_cached_streams(tmp_path):
    _write(tmp_path / "ds", SPECS[0], 3)
    with TestClient(create_app(Settings(store=tmp_path, cache_mb=1))) as client:
        for _ in range(2):  # a miss, then a hit
            before = client.get("/v1/datasets/ds/sequences/2", headers=ARROW).content
        _write(tmp_path / "ds", SPECS[0], 3, length=6, overwrite=True)
        after = records_from_arrow(client.get("/v1/datasets/ds/sequences/2", headers=ARROW).content)[0]
        assert after.key != records_from_arrow(before)[0].key and len(after) == 6
        assert after.equals(open_dataset(tmp_path / "ds")[2])


def test_the_cache_keeps_a_record_and_its_stream_for_the_memory_of_one():
    record = synthetic_record(SPECS[0], np.random.default_rng(0), seq_id=4, length=50, vocab_size=100, neg_inf=True)
    view, arrow = encoded(record)
    assert view.equals(record) and arrow == records_to_arrow([record])
    assert np.shares_memory(np.frombuffer(arrow, dtype=np.uint8), view.logprobs)  # a view of the stream
    cache = RecordCache(10 * len(arrow))
    cache.put(("ds", 4), view, arrow)
    found = cache.entry(("ds", 4))
    assert found is not None and found.record is view and found.arrow is arrow and cache.nbytes == len(arrow)


@pytest.mark.parametrize("spec", [*SPECS, Spec(method="topp", p=0.9, k=8)], ids=lambda s: s.describe())
def test_orjson_writes_the_json_values_of_the_previous_encoder(spec):
    record = synthetic_record(spec, np.random.default_rng(5), seq_id=11, length=7, vocab_size=100, neg_inf=True)
    before = json.loads(json.dumps(record_to_json(record), allow_nan=False))
    text = RecordsJSONResponse(record_to_json(record, arrays=True)).body
    now = json.loads(text)  # strict JSON: nulls, no NaN or Infinity literals
    assert b"NaN" not in text and b"Infinity" not in text
    assert now.keys() == before.keys()
    for name, value in before.items():
        if isinstance(value, list) and any(isinstance(v, float) or v is None for v in value):
            # float32 written in its shortest repr: the same float32 once parsed, nulls where they were
            assert [v is None for v in now[name]] == [v is None for v in value], name
            a = np.array([np.nan if v is None else v for v in value], dtype=np.float32)
            b = np.array([np.nan if v is None else v for v in now[name]], dtype=np.float32)
            assert np.array_equal(a, b, equal_nan=True), name
        else:
            assert now[name] == value, name
    assert record_from_json(now).equals(record)


def test_json_of_a_range_of_a_record_encodes():
    record = synthetic_record(SPECS[0], np.random.default_rng(6), seq_id=0, length=8, vocab_size=100, neg_inf=True)
    part = record.slice(2, 5)
    assert record_from_json(json.loads(RecordsJSONResponse(record_to_json(part, arrays=True)).body)).equals(part)
