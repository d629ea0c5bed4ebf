"""Every endpoint and error through FastAPI's TestClient: records equal the disk, limits, auth, traversal."""

from __future__ import annotations

import os
import re

import pytest
from fastapi.testclient import TestClient

from logitstore import content_key, open_dataset
from logitstore.server import Settings, create_app
from logitstore.wire import ARROW_STREAM, record_from_json, records_from_arrow

ARROW = {"Accept": ARROW_STREAM}


@pytest.fixture(scope="module")
def client(store):
    with TestClient(create_app(Settings(store=store, max_batch_sequences=8, max_positions=9))) as c:
        yield c


def same(a, b) -> bool:
    return a.equals(b)


def test_health_and_listing(client, store):
    assert client.get("/healthz").json() == {"status": "ok", "datasets": 2}
    listed = {d["name"]: d for d in client.get("/v1/datasets").json()["datasets"]}
    assert set(listed) == {"sample", "topk"}
    assert listed["topk"]["backend"] == "zarr" and listed["sample"]["sequences"] == 23
    assert client.get("/v1/datasets/topk").json() == open_dataset(store / "topk").manifest.to_dict()


@pytest.mark.parametrize("name", ["sample", "topk"])
def test_sequences_in_json_and_arrow_equal_the_disk(client, store, name):
    ds = open_dataset(store / name)
    for seq_id in (0, 7, 22):
        if len(ds[seq_id]) > 9:
            continue
        as_json = client.get(f"/v1/datasets/{name}/sequences/{seq_id}")
        assert as_json.headers["content-type"] == "application/json"
        assert same(record_from_json(as_json.json()), ds[seq_id])
        as_arrow = client.get(f"/v1/datasets/{name}/sequences/{seq_id}", headers=ARROW)
        assert as_arrow.headers["content-type"] == ARROW_STREAM
        assert same(records_from_arrow(as_arrow.content)[0], ds[seq_id])
    part = client.get(f"/v1/datasets/{name}/sequences/4?start=2&stop=5", headers=ARROW)
    assert same(records_from_arrow(part.content)[0], ds[4].slice(2, 5))


def test_batch_key_and_lookup(client, store):
    ds = open_dataset(store / "sample")
    got = records_from_arrow(
        client.post("/v1/datasets/sample/batch", json={"seq_ids": [5, 1, 5]}, headers=ARROW).content
    )
    assert [r.seq_id for r in got] == [5, 1, 5] and all(same(r, ds[r.seq_id]) for r in got)
    as_json = client.post("/v1/datasets/sample/batch", json={"seq_ids": [2]}).json()
    assert same(record_from_json(as_json["records"][0]), ds[2])
    assert same(record_from_json(client.get(f"/v1/datasets/sample/keys/{ds[3].key.hex()}").json()), ds[3])
    found = client.post("/v1/lookup", json={"input_ids": ds[6].input_ids.tolist()}).json()
    assert {"dataset": "sample", "seq_id": 6} in found["matches"] and same(record_from_json(found["record"]), ds[6])


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "match"),
    [
        ("get", "/v1/datasets/nope", None, 404, "no dataset 'nope'"),
        ("get", "/v1/datasets/unfinished", None, 404, "no dataset 'unfinished' in this store"),
        ("get", "/v1/datasets/sample/sequences/23", None, 404, r"seq_id 23 is outside 0..22"),
        ("get", "/v1/datasets/sample/sequences/-1", None, 422, "greater than or equal to 0"),
        ("get", "/v1/datasets/sample/sequences/abc", None, 422, "valid integer"),
        ("get", "/v1/datasets/sample/sequences/1?start=4&stop=2", None, 422, r"position range \[4, 2\)"),
        ("get", "/v1/datasets/sample/sequences/9", None, 413, "positions requested, the limit is 9"),
        ("get", "/v1/datasets/sample/keys/xyz", None, 422, "32 hex"),
        ("get", "/v1/datasets/sample/keys/" + "0" * 32, None, 404, "no sequence with content key"),
        ("post", "/v1/datasets/sample/batch", {"seq_ids": []}, 422, "at least 1"),
        ("post", "/v1/datasets/sample/batch", {"seq_ids": list(range(9))}, 413, "9 seq_ids in one batch"),
        ("post", "/v1/datasets/sample/batch", {"ids": [1]}, 422, "seq_ids"),
        ("post", "/v1/lookup", {"input_ids": [1, 2, 3]}, 404, "no dataset in this store caches"),
        ("post", "/v1/lookup", {"input_ids": [-5]}, 422, r"\[0, 2\*\*31\)"),
    ],
)
def test_errors_name_the_problem(client, method, url, body, status, match):
    response = client.request(method.upper(), url, json=body)
    assert response.status_code == status, response.text
    assert re.search(match, response.json()["detail"]), response.json()


def test_raw_files_with_ranges(client, store):
    whole = client.get("/v1/datasets/sample/files/manifest.json")
    assert whole.status_code == 200 and whole.content == (store / "sample" / "manifest.json").read_bytes()
    shard = open_dataset(store / "sample").manifest.shards[0].path
    part = client.get(f"/v1/datasets/sample/files/{shard}", headers={"Range": "bytes=0-3"})
    assert part.status_code == 206 and part.content == b"PAR1"
    zarr_file = next(p for p in (store / "topk" / "shards").rglob("zarr.json"))
    rel = zarr_file.relative_to(store / "topk").as_posix()
    assert client.get(f"/v1/datasets/topk/files/{rel}").content == zarr_file.read_bytes()
    assert client.head("/v1/datasets/sample/files/keys.idx").status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "/v1/datasets/sample/files/../secret.txt",
        "/v1/datasets/sample/files/%2e%2e/secret.txt",
        "/v1/datasets/sample/files/..%2fsecret.txt",
        "/v1/datasets/sample/files//etc/passwd",
        "/v1/datasets/sample/files/shards/../../secret.txt",
        "/v1/datasets/..%2f/files/secret.txt",
        "/v1/datasets/%2e%2e/files/secret.txt",
        "/v1/datasets/sample/files/.lock",
        "/v1/datasets/sample/files/shards/link",
        "/v1/datasets/linked/files/manifest.json",
    ],
)
def test_nothing_outside_the_store_or_beyond_the_dataset_files_is_served(client, store, url):
    outside = store.parent / "outside.txt"
    outside.write_text("never served")
    for link, target in ((store / "sample" / "shards" / "link", outside), (store / "linked", store.parent)):
        if not link.exists():
            os.symlink(target, link)
    response = client.get(url)
    assert response.status_code in (404, 422), (url, response.status_code)
    assert b"never served" not in response.content and b"outside any dataset" not in response.content


def test_api_key(store):
    app = create_app(Settings(store=store, api_key="s3cret"))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200  # probes need no key
        missing = c.get("/v1/datasets")
        assert missing.status_code == 401 and "no API key was given" in missing.json()["detail"]
        assert c.get("/v1/datasets", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/v1/datasets", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/datasets/sample/files/keys.idx", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/datasets/sample/files/keys.idx").status_code == 401


def test_a_corrupt_shard_is_a_clear_5xx_and_other_datasets_keep_serving(tmp_path, store):
    import shutil

    shutil.copytree(store / "sample", tmp_path / "broken")
    shard = tmp_path / "broken" / open_dataset(store / "sample").manifest.shards[0].path
    shard.write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    shutil.copytree(store / "topk", tmp_path / "fine")
    with TestClient(create_app(Settings(store=tmp_path))) as c:
        broken = c.get("/v1/datasets/broken/sequences/0")
        assert broken.status_code == 500
        assert "shards/00000.parquet" in broken.json()["detail"] and broken.json()["error"] == "CorruptShardError"
        assert c.get("/v1/datasets/fine/sequences/0").status_code == 200
        assert 'logitstore_errors_total{type="CorruptShardError"} 1.0' in c.get("/metrics").text


def test_metrics_count_requests_latency_and_bytes(client):
    client.get("/v1/datasets/sample/sequences/0")
    text = client.get("/metrics").text
    assert 'logitstore_requests_total{method="GET",route="/v1/datasets/{name}/sequences/{seq_id}",status="200"}' in text
    assert "logitstore_request_seconds_bucket" in text and "logitstore_response_bytes_total" in text


def test_openapi_describes_binary_media_types(client):
    spec = client.get("/openapi.json").json()
    seq = spec["paths"]["/v1/datasets/{name}/sequences/{seq_id}"]["get"]["responses"]["200"]["content"]
    assert ARROW_STREAM in seq and "application/json" in seq
    files = spec["paths"]["/v1/datasets/{name}/files/{path}"]["get"]["responses"]
    assert "application/octet-stream" in files["200"]["content"] and "206" in files
    assert content_key([1]) != content_key([2])  # sanity of the helper the lookup uses


def test_settings_from_the_environment(store, monkeypatch):
    monkeypatch.setenv("LOGITSTORE_STORE", str(store))
    monkeypatch.setenv("LOGITSTORE_MAX_BATCH_SEQUENCES", "3")
    app = create_app()
    assert app.state.settings.max_batch_sequences == 3
    monkeypatch.delenv("LOGITSTORE_STORE")
    from logitstore.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="LOGITSTORE_STORE"):
        create_app()
    with pytest.raises(InvalidInputError, match="is not a directory"):
        create_app(Settings(store=store / "nope"))
