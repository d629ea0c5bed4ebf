"""The service's cache of decoded records: bounded by bytes, filled a row group at a time, never stale after a
rebuild; Arrow responses streamed batch by batch with an exact Content-Length."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from logitstore import DatasetWriter, Spec, open_dataset
from logitstore.server import Settings, create_app
from logitstore.server.cache import RecordCache
from logitstore.wire import ARROW_STREAM, records_from_arrow
from tests.conftest import synthetic_record, teacher

SPEC = Spec(method="topk", k=4)


def _records(rng, n, length=10):
    return [synthetic_record(SPEC, rng, seq_id=i, length=length, vocab_size=100) for i in range(n)]


def _write(path, records, **kwargs):
    with DatasetWriter(path, spec=SPEC, teacher=teacher(100), **kwargs) as w:
        for r in records:
            w.write(r)


def test_the_cache_evicts_least_recently_used_past_its_byte_budget():
    records = _records(np.random.default_rng(0), 3)
    size = records[0].nbytes
    cache = RecordCache(2 * size)
    cache.put(("a", 0), records[0])
    cache.put(("a", 1), records[1])
    assert cache.get(("a", 0)) is records[0]  # now the most recently used
    cache.put(("b", 2), records[2])
    assert cache.get(("a", 1)) is None and cache.get(("a", 0)) is records[0] and cache.nbytes == 2 * size
    cache.discard("a")
    assert len(cache) == 1 and cache.nbytes == size
    off = RecordCache(0)
    off.put(("a", 0), records[0])
    assert len(off) == 0


def test_a_read_caches_its_whole_row_group_and_answers_like_the_disk(tmp_path, monkeypatch):
    monkeypatch.setattr("logitstore.formats.base.FLUSH_ENTRIES", 120)  # row groups of 3 sequences
    _write(tmp_path / "ds", _records(np.random.default_rng(1), 9))
    disk = open_dataset(tmp_path / "ds")
    with TestClient(create_app(Settings(store=tmp_path, cache_mb=1))) as client:
        cache = client.app.state.store.cache
        got = client.get("/v1/datasets/ds/sequences/4", headers={"Accept": ARROW_STREAM})
        assert records_from_arrow(got.content)[0].equals(disk[4])
        assert len(cache) == 3  # seq_ids 3, 4, 5: the row group that read decoded
        body = client.post("/v1/datasets/ds/batch", json={"seq_ids": [5, 0, 8, 5]}, headers={"Accept": ARROW_STREAM})
        assert int(body.headers["content-length"]) == len(body.content)
        assert [r.seq_id for r in records_from_arrow(body.content)] == [5, 0, 8, 5]
        assert all(r.equals(disk[r.seq_id]) for r in records_from_arrow(body.content))
        assert len(cache) == 9


@pytest.mark.parametrize("cache_mb", [0, 1])
def test_a_rebuilt_dataset_is_never_answered_from_the_old_records(tmp_path, cache_mb):
    rng = np.random.default_rng(2)
    _write(tmp_path / "ds", _records(rng, 4))
    with TestClient(create_app(Settings(store=tmp_path, cache_mb=cache_mb))) as client:
        before = client.get("/v1/datasets/ds/sequences/2").json()
        _write(tmp_path / "ds", _records(rng, 4, length=7), overwrite=True)
        after = client.get("/v1/datasets/ds/sequences/2").json()
        assert before["key"] != after["key"] and len(after["lse"]) == 7
        assert after["key"] == open_dataset(tmp_path / "ds")[2].key.hex()
