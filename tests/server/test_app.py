"""Every endpoint and error through FastAPI's TestClient: records equal the disk, limits, auth, traversal."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST

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
    manifest = open_dataset(store / "topk").manifest.to_dict()
    assert client.get("/v1/datasets/topk").json() == json.loads(json.dumps(manifest))  # tuples are lists in JSON


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
        ("get", "/v1/datasets/sample/keys/xyz", None, 422, r"path.key: .*pattern '\^\[0-9a-fA-F\]\{32\}\$'"),
        ("get", "/v1/datasets/sample/keys/" + "0" * 32, None, 404, "no sequence with content key"),
        ("post", "/v1/datasets/sample/batch", {"seq_ids": []}, 422, "at least 1"),
        ("post", "/v1/datasets/sample/batch", {"seq_ids": list(range(9))}, 413, "9 seq_ids in one batch"),
        ("post", "/v1/datasets/sample/batch", {"ids": [1]}, 422, "seq_ids"),
        # JSON false is not seq_id 0 (pydantic's lax mode answered record 0), and -1 is not a seq_id (was a 404)
        ("post", "/v1/datasets/sample/batch", {"seq_ids": [False]}, 422, "seq_ids.0: .*expected an integer, got bool"),
        ("post", "/v1/datasets/sample/batch", {"seq_ids": [3, -1]}, 422, "seq_ids.1: .*greater than or equal to 0"),
        ("post", "/v1/lookup", {"input_ids": [1, 2, 3]}, 404, "no dataset in this store caches"),
        ("post", "/v1/lookup", {"input_ids": [-5]}, 422, "input_ids.0: Input should be greater than or equal to 0"),
        ("post", "/v1/lookup", {"input_ids": [2**31]}, 422, "input_ids.0: Input should be less than 2147483648"),
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


def test_openapi_declares_what_the_service_answers(client):
    """Regressions of what tests/server/test_schema.py found undocumented."""
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == [CONTENT_TYPE_LATEST]  # was also JSON
    files = paths["/v1/datasets/{name}/files/{path}"]["get"]
    assert set(files["responses"]["200"]["content"]) == {"application/octet-stream", "application/json"}
    assert "multipart/byteranges" in files["responses"]["206"]["content"] and {"400", "416"} <= set(files["responses"])
    assert [p["name"] for p in files["parameters"] if p["in"] == "header"] == ["Range"]
    for operations in paths.values():  # every JSON error has the {"detail", "error"} body
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status[0] in "45" and "application/json" in response.get("content", {}):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorOut"
                    }
    schemas = spec["components"]["schemas"]
    assert schemas["BatchRequest"]["properties"]["seq_ids"]["maxItems"] == 8  # the configured limit
    assert schemas["BatchRequest"]["properties"]["seq_ids"]["items"] == {"type": "integer", "minimum": 0}


def test_framework_errors_have_the_same_body_as_logitstore_errors(client):
    not_utf8 = client.post(
        "/v1/lookup", content=b'{"input_ids": [1, 2]}\xff', headers={"Content-Type": "application/json"}
    )
    assert not_utf8.status_code == 422 and not_utf8.json()["error"] == "InvalidInputError"  # was a bare 400
    unknown = client.get("/v2/datasets")
    assert unknown.status_code == 404 and unknown.json()["error"] == "NotFoundError"
    assert "/openapi.json" in unknown.json()["detail"]
    wrong = client.options("/v1/datasets/sample/files/keys.idx")
    assert wrong.status_code == 405 and wrong.json()["error"] == "InvalidInputError"
    assert wrong.headers["allow"] == "GET, HEAD"  # was "HEAD": the first of the two routes only


def test_ranges_the_file_route_refuses(client):
    url = "/v1/datasets/sample/files/keys.idx"
    other_unit = client.get(url, headers={"Range": "lines=0-3"})
    assert other_unit.status_code == 422 and "header.Range" in other_unit.json()["detail"]  # was a text/plain 400
    beyond = client.get(url, headers={"Range": "bytes=99999999-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"].startswith("bytes */")
    backwards = client.get(url, headers={"Range": "bytes=5-2"})
    assert backwards.status_code == 400 and backwards.headers["content-type"].startswith("text/plain")
    several = client.get(url, headers={"Range": "bytes=0-1, 4-5"})
    assert several.status_code == 206 and several.headers["content-type"].startswith("multipart/byteranges")


def test_an_unreadable_manifest_is_a_5xx_and_lookups_search_the_other_datasets(tmp_path, store):
    shutil.copytree(store / "sample", tmp_path / "sample")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    ids = open_dataset(store / "sample")[6].input_ids.tolist()
    with TestClient(create_app(Settings(store=tmp_path))) as c:
        bad = c.get("/v1/datasets/bad")
        assert bad.status_code == 500 and bad.json()["error"] == "CorruptShardError"  # was a 422: "your request"
        assert "dataset 'bad' cannot be opened: manifest.json is not valid JSON" in bad.json()["detail"]
        assert c.post("/v1/lookup", json={"input_ids": ids}).json()["matches"] == [{"dataset": "sample", "seq_id": 6}]
        missing = c.post("/v1/lookup", json={"input_ids": [1, 2, 3]})
        assert missing.status_code == 404 and "unreadable, not searched: bad" in missing.json()["detail"]
        assert [d["name"] for d in c.get("/v1/datasets").json()["datasets"]] == ["sample"]


def test_a_rebuilt_dataset_is_reopened_even_within_one_clock_tick(tmp_path, store):
    shutil.copytree(store / "sample", tmp_path / "d")
    manifest = tmp_path / "d" / "manifest.json"
    with TestClient(create_app(Settings(store=tmp_path))) as c:
        assert c.get("/v1/datasets/d").json()["teacher"]["name"] == "test-teacher"
        before = manifest.stat()
        rebuilt = tmp_path / "d" / "manifest.json.partial"  # same size, same mtime, new inode: as a writer publishes
        rebuilt.write_text(manifest.read_text().replace('"test-teacher"', '"test-teachex"'))
        os.replace(rebuilt, manifest)
        os.utime(manifest, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert manifest.stat().st_size == before.st_size and manifest.stat().st_mtime_ns == before.st_mtime_ns
        assert c.get("/v1/datasets/d").json()["teacher"]["name"] == "test-teachex"


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


def test_served_files_are_the_datasets_data_and_nothing_else():
    from logitstore.server.store import SERVED

    for ok in ("manifest.json", "keys.idx", "shards/00000.parquet", "shards/00001.zarr/ids/c/0", "audit/00000.parquet"):
        assert SERVED.fullmatch(ok), ok
    for bad in ("_job/lock", "audit/x.json", "audit/sub/00000.parquet", "secret.txt", "shards"):
        assert not SERVED.fullmatch(bad), bad
